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
    "passages": 4, "group_size": 2, "steps": 1, "max_closed": 1, "max_context": 1,
    "max_passage_tokens": 48, "shard_size": 2, "measure": False,
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
    parser.add_argument("--passages", type=int, default=72, help="training passages (SQuAD cs224n v2.0 paragraphs)")
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
        "passages": args.passages, "group_size": args.group_size, "steps": args.steps, "max_closed": args.max_closed,
        "max_context": args.max_context, "max_passage_tokens": args.max_passage_tokens, "shard_size": args.shard_size,
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
        "epochs": args.epochs, "batch_passages": args.batch_passages, "val_passages": args.val_passages,
        "max_closed": args.max_closed, "max_context": args.max_context, "hidden_dim": args.hidden_dim,
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
    from hyco_rag.dyprag import ParameterTranslator, ParametricRAG
    from hyco_rag.dyprag.evaluate import evaluate_modes, squad_gold_examples
    from hyco_rag.generation import ChatGenerator, GenerationConfig
    from hyco_rag.results import format_table, write_results

    model, tokenizer = _setup(args)
    translator = ParameterTranslator.from_pretrained(args.translator, model=model)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, stop_at_newline=True)
    rag = ParametricRAG(ChatGenerator(model, tokenizer, config), translator)
    examples = squad_gold_examples(args.questions, seed=args.seed)
    rows = evaluate_modes(rag, examples, args.modes, progress=not args.no_progress)
    print(format_table(rows))
    path = write_results(
        "dyprag_quick_eval",
        rows,
        config={"translator": str(args.translator or "shipped"), "questions": len(examples), "seed": args.seed,
                "max_new_tokens": args.max_new_tokens, "threads": args.threads, "data": "SQuAD v1.1 dev, gold passage"},
    )
    print(f"results: {path}")
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

    evaluation = sub.add_parser("eval", help="quick SQuAD check of a translator", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
