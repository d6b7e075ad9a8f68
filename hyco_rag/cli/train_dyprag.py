"""DyPRAG training commands: ``hyco-rag train prag`` (stage 1) and ``hyco-rag train translator``
(stage 2), plus ``python -m hyco_rag.cli.train_dyprag`` running both (and the shipped recipe).

Stage 1 trains one LoRA per SQuAD training passage on the served model and stores the
(embedding, LoRA) pairs; stage 2 trains the parameter translator on them.  ``--quick`` runs a
seconds-long miniature of either stage (used by the tests).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

logger = logging.getLogger(__name__)

#: Default output folders (``runs/`` is git-ignored).
DEFAULT_PAIRS = "runs/dyprag/pairs"
DEFAULT_TRANSLATOR = "runs/dyprag/translator"

#: ``--quick`` overrides: a run of a few passages and tiny sequences.
QUICK_PRAG = {
    "passages": 4,
    "group_size": 2,
    "steps": 1,
    "max_closed": 1,
    "max_context": 1,
    "max_passage_tokens": 48,
    "shard_size": 2,
    "measure": False,
}
QUICK_TRANSLATOR = {"epochs": 1, "batch_passages": 2, "val_passages": 1, "max_closed": 1, "max_context": 1, "hidden_dim": 8}


def _setup(args: argparse.Namespace):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from hyco_rag.models import load_causal_lm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return load_causal_lm(args.model, device=args.device)


def add_prag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default=DEFAULT_PAIRS, help="folder for the pairs (manifest.json + shards)")
    parser.add_argument("--passages", type=int, default=72, help="training passages (SQuAD v1.1 train paragraphs)")
    parser.add_argument("--offset", type=int, default=0, help="skip this many (shuffled) passages first")
    parser.add_argument("--group-size", type=int, default=8, help="passages whose LoRAs train together")
    parser.add_argument("--steps", type=int, default=3, help="optimiser steps per passage and epoch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument("--max-closed", type=int, default=3, help="closed-book QA sequences per passage")
    parser.add_argument("--max-context", type=int, default=1, help="QA-with-passage sequences per passage")
    parser.add_argument("--max-passage-tokens", type=int, default=192, help="length of the passage-LM sequence")
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--no-measure", action="store_true", help="skip the before/after closed-book loss")
    _common(parser)


def add_translator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="folder written by `hyco-rag train prag`")
    parser.add_argument("--output", default=DEFAULT_TRANSLATOR, help="folder for config.json + model.safetensors")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-passages", type=int, default=4)
    parser.add_argument("--hidden-dim", type=int, default=32, help="translator trunk width p")
    parser.add_argument("--mse-weight", type=float, default=1.0)
    parser.add_argument("--lm-weight", type=float, default=1.0)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--max-closed", type=int, default=2, help="closed-book QA sequences per passage and step")
    parser.add_argument("--max-context", type=int, default=1, help="QA-with-passage sequences per passage and step")
    parser.add_argument("--val-passages", type=int, default=8, help="pairs held out for the final report")
    _common(parser)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="served model; None = the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--device", default=None, help="cpu or cuda; None = cuda when present")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a seconds-long miniature run (tests)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_prag(args: argparse.Namespace) -> int:
    from hyco_rag.dyprag.training import PragConfig, collect_prag_pairs, load_training_passages

    values = {
        "passages": args.passages,
        "group_size": args.group_size,
        "steps": args.steps,
        "max_closed": args.max_closed,
        "max_context": args.max_context,
        "max_passage_tokens": args.max_passage_tokens,
        "shard_size": args.shard_size,
        "measure": not args.no_measure,
    }
    if args.quick:
        values.update(QUICK_PRAG)
    count = values.pop("passages")
    config = PragConfig(epochs=args.epochs, lr=args.lr, rank=args.rank, seed=args.seed, **values)
    model, tokenizer = _setup(args)
    passages = load_training_passages(limit=count, offset=args.offset, seed=args.seed)
    if len(passages) < count:
        logger.warning("only %d training passages available (asked for %d)", len(passages), count)
    start = time.perf_counter()
    out = collect_prag_pairs(model, tokenizer, passages, args.output, config, progress=not args.no_progress)
    print(f"stage 1: {len(passages)} passage LoRAs in {time.perf_counter() - start:.0f} s -> {out}")
    return 0


def run_translator(args: argparse.Namespace) -> int:
    from hyco_rag.dyprag.training import TranslatorTrainConfig, train_translator

    values = {
        "epochs": args.epochs,
        "batch_passages": args.batch_passages,
        "val_passages": args.val_passages,
        "max_closed": args.max_closed,
        "max_context": args.max_context,
        "hidden_dim": args.hidden_dim,
    }
    if args.quick:
        values.update(QUICK_TRANSLATOR)
    config = TranslatorTrainConfig(
        lr=args.lr, mse_weight=args.mse_weight, lm_weight=args.lm_weight, kl_weight=args.kl_weight, seed=args.seed, **values
    )
    model, tokenizer = _setup(args)
    start = time.perf_counter()
    translator = train_translator(model, tokenizer, args.pairs, args.output, config, progress=not args.no_progress)
    report = getattr(translator, "training_report", {})
    print(
        f"stage 2: translator ({translator.num_parameters():,} parameters) trained on "
        f"{report.get('train_passages')} pairs in {time.perf_counter() - start:.0f} s -> {args.output}"
    )
    for label, losses in report.get("validation", {}).items():
        print(f"  held-out answer loss, {label:>20}: " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Quick SQuAD check of a translator: prints a table and writes JSON under benchmarks/results."""
    from hyco_rag.dyprag import ParameterTranslator
    from hyco_rag.dyprag.encoding import PassageEncoder
    from hyco_rag.dyprag.evaluate import evaluate_modes, squad_gold_examples
    from hyco_rag.evaluation.parametric import DeltaReader, DeltaSource, strip_private
    from hyco_rag.generation import ChatGenerator, GenerationConfig
    from hyco_rag.results import format_table, write_results

    model, tokenizer = _setup(args)
    translator = ParameterTranslator.from_pretrained(args.translator, model=model)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, stop_at_newline=True)
    reader = DeltaReader(ChatGenerator(model, tokenizer, config), config)
    source = DeltaSource(translator, PassageEncoder(model, tokenizer))
    items = squad_gold_examples(args.questions, seed=args.seed)
    rows = strip_private(evaluate_modes(reader, source, items, args.modes, progress=not args.no_progress))
    columns = ["mode", "n", "em", "f1", "contains", "mean_answer_words", "s_per_q"]
    print(format_table(rows, columns))
    path = write_results(
        "dyprag_quick_eval",
        rows,
        config={
            "translator": str(args.translator or "shipped"),
            "questions": len(items),
            "seed": args.seed,
            "max_new_tokens": args.max_new_tokens,
            "threads": args.threads,
            "data": "SQuAD v1.1 dev, gold passage, SHORT_ANSWER_TEMPLATE",
        },
    )
    print(f"results: {path}")
    return 0


DEFAULT_DISTILL = "runs/dyprag/distill"


def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", default=DEFAULT_DISTILL, help="cache + checkpoint folder (resumable)")
    parser.add_argument("--output", default=DEFAULT_TRANSLATOR, help="folder for the trained translator")
    parser.add_argument("--squad-passages", type=int, default=160, help="SQuAD v1.1 TRAIN paragraphs")
    parser.add_argument("--cards", type=int, default=128, help="synthetic training cards")
    parser.add_argument("--val", type=int, default=24, help="SQuAD-train paragraphs and cards each held out of training")
    parser.add_argument(
        "--val-eval", type=int, default=None, help="how many of the held-out ones the report scores (default: all)"
    )
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    parser.add_argument("--max-passage-tokens", type=int, default=160)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-passages", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--margin-weight", type=float, default=1.0)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--ce-weight", type=float, default=1.0)
    _common(parser)


def run_distill(args: argparse.Namespace) -> int:
    """Context distillation: cache features + teacher once, train, save translator + report."""
    import json
    from pathlib import Path

    import torch

    from hyco_rag.data import load_squad
    from hyco_rag.dyprag.training.distill import (
        DistillConfig,
        build_cache,
        card_passages,
        check_no_overlap,
        load_squad_train,
        passage_key,
        train_distilled,
    )
    from hyco_rag.results import write_json_atomic, write_text_atomic

    squad_n, cards_n, val = args.squad_passages, args.cards, args.val
    if args.quick:
        squad_n, cards_n, val = 6, 6, 2
    config = DistillConfig(
        squad_passages=squad_n,
        cards=cards_n,
        val_squad=val,
        val_cards=val,
        max_passage_tokens=args.max_passage_tokens,
        hidden_dim=8 if args.quick else args.hidden_dim,
        epochs=args.epochs,
        batch_passages=2 if args.quick else args.batch_passages,
        lr=args.lr,
        max_steps=args.max_steps,
        w_margin=args.margin_weight,
        w_kl=args.kl_weight,
        w_ce=args.ce_weight,
        seed=args.seed,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    model, tokenizer = _setup(args)
    squad = load_squad_train(limit=squad_n + val, seed=args.seed)
    cards = card_passages(cards_n + val, seed=args.seed)
    train_passages = squad[val:] + cards[val:]
    scored = val if args.val_eval is None else min(val, args.val_eval)
    val_passages = squad[:scored] + cards[:scored]
    # The leak check: no training paragraph may be a SQuAD v1.1 dev paragraph (what we score).
    keys = {passage_key(p.text) for p in train_passages}
    dev_texts = sorted({p.text for ex in load_squad(num_distractors=0) for p in ex.passages})
    check_no_overlap(keys, dev_texts, "SQuAD v1.1 dev set")
    work = Path(args.work)
    records = build_cache(model, tokenizer, train_passages, work / "cache-train", config)
    val_records = build_cache(model, tokenizer, val_passages, work / "cache-val", config)
    cache_cpu = time.process_time() - cpu
    translator, report = train_distilled(model, tokenizer, records, config, work / "train", val_records=val_records)
    out = translator.save_pretrained(args.output)
    report.update(
        command="python -m hyco_rag.cli.train_dyprag " + " ".join(sys.argv[1:]),
        cache_cpu_seconds=round(cache_cpu, 1),
        total_cpu_seconds=round(time.process_time() - cpu, 1),
        total_wall_seconds=round(time.perf_counter() - wall, 1),
        threads=args.threads,
        data="SQuAD v1.1 train (squad-train-extra/train-v1.1-explorer.json) + synthetic training cards; "
        "checked disjoint from SQuAD v1.1 dev",
    )
    write_json_atomic(out / "training.json", report)
    write_text_atomic(out / "training_passages.txt", "".join(sorted(k + "\n" for k in keys)))
    print(f"translator ({translator.num_parameters():,} parameters) -> {out}")
    for key in ("heldout_squad_answer_ce", "heldout_card_answer_ce"):
        if key in report:
            print(f"  {key}: " + json.dumps(report[key]))
    del torch
    return 0


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    """Give ``hyco-rag train <name>`` (``prag`` or ``translator``) its arguments and handler."""
    if name == "prag":
        add_prag_arguments(parser)
        parser.set_defaults(handler=run_prag)
    elif name == "translator":
        add_translator_arguments(parser)
        parser.set_defaults(handler=run_translator)
    else:  # pragma: no cover - programming error
        raise ValueError(f"no DyPRAG pipeline called {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hyco_rag.cli.train_dyprag {prag,translator,all} ...``"""
    parser = argparse.ArgumentParser(prog="python -m hyco_rag.cli.train_dyprag", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    configure("prag", sub.add_parser("prag", help="stage 1", formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    configure("translator", sub.add_parser("translator", help="stage 2", formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    distill = sub.add_parser(
        "distill", help="translator by context distillation", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_distill_arguments(distill)
    distill.set_defaults(handler=run_distill)
    both = sub.add_parser("all", help="stage 1 then stage 2", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_prag_arguments(both)
    both.add_argument("--translator-output", default=DEFAULT_TRANSLATOR, help="folder for the trained translator")
    both.add_argument("--translator-epochs", type=int, default=1)
    both.add_argument("--translator-lr", type=float, default=2e-3)
    both.add_argument("--batch-passages", type=int, default=4)
    both.add_argument("--hidden-dim", type=int, default=32)
    both.add_argument("--mse-weight", type=float, default=1.0)
    both.add_argument("--lm-weight", type=float, default=1.0)
    both.add_argument("--kl-weight", type=float, default=1.0)
    both.add_argument("--translator-max-closed", type=int, default=2)
    both.add_argument("--val-passages", type=int, default=8)
    from hyco_rag.dyprag.evaluate import EVAL_MODES

    evaluation = sub.add_parser(
        "eval", help="quick SQuAD check of a translator", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    evaluation.add_argument("--translator", default=None, help="translator folder; None = the shipped one")
    evaluation.add_argument("--questions", type=int, default=100)
    evaluation.add_argument("--modes", nargs="+", default=list(EVAL_MODES), choices=EVAL_MODES)
    evaluation.add_argument("--max-new-tokens", type=int, default=16)
    evaluation.add_argument("--batch-size", type=int, default=8)
    _common(evaluation)
    evaluation.set_defaults(handler=run_eval)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.stage == "all":
        code = run_prag(args)
        if code:
            return code
        stage2 = argparse.Namespace(**vars(args))
        stage2.pairs, stage2.output = args.output, args.translator_output
        stage2.epochs, stage2.lr = args.translator_epochs, args.translator_lr
        stage2.max_closed = args.translator_max_closed
        return run_translator(stage2)
    return int(args.handler(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
