"""`hyco-rag train hybrid`: train the hybrid adapter (HyCo2's soft tokens) for the served model.

Steps: SQuAD v1.1 *train* questions (gold + same-article and retrieved distractors) and the
multi-hop train splits, checked against every evaluation set; token states of every passage
and question from the frozen LLM, the compressor's kept text at the training budget, and the
teacher's log-probabilities over the uncompressed passages, each cached on disk once; then the
three stages mixed (paraphrase, completion, instruction with KL), resumable; then the answer
NLL on held-out SQuAD train articles with the adapter's soft tokens, zeroed soft tokens and
another question's soft tokens (the controls).  Writes ``config.json`` + ``model.safetensors``
(fp16), ``training_report.json`` and a ``README.md`` with the exact command.

``--quick``: a handful of questions and steps (minutes), to check the pipeline end to end.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    """Add the pipeline's arguments (called by :mod:`hyco_rag.cli.train`)."""
    from hyco_rag.hybrid.training.trainer import HybridTrainingConfig

    defaults = HybridTrainingConfig()
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--output", default="hyco-hybrid", help="folder to write the trained adapter to")
    parser.add_argument(
        "--model", default=None, help="served model (HF id, folder or GGUF; default: embedded SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--compressor", default=None, help="compressor folder for the kept text (default: the shipped one)")
    parser.add_argument("--squad-questions", type=int, default=1000, help="SQuAD v1.1 train questions")
    parser.add_argument("--distractors", type=int, default=1, help="same-article distractor paragraphs per SQuAD question")
    parser.add_argument("--retrieved", type=int, default=0, help="distractors retrieved from other articles per SQuAD question")
    parser.add_argument("--no-multihop", action="store_true", help="leave out the multi-hop train questions")
    parser.add_argument("--heldout-questions", type=int, default=100, help="held-out SQuAD train questions for the NLL check")
    parser.add_argument(
        "--cache-dir", default=None, help="token-state, kept-text and teacher caches (default: the hyco-rag cache)"
    )
    parser.add_argument("--quick", action="store_true", help="a few questions and steps, to check the pipeline")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    for item in fields(HybridTrainingConfig):
        if item.name in ("stage_weights", "checkpoint_every"):
            continue
        parser.add_argument(
            f"--{item.name.replace('_', '-')}",
            type=type(getattr(defaults, item.name)),
            default=None,
            help=f"(default {getattr(defaults, item.name)})",
        )
    parser.add_argument(
        "--stage-weights", default=None, help="paraphrase,completion,instruction mixing weights (default 0.2,0.2,0.6)"
    )
    parser.set_defaults(handler=run)


def _config(args: argparse.Namespace) -> Any:
    from hyco_rag.hybrid.training.trainer import HybridTrainingConfig

    values: dict[str, Any] = {}
    for item in fields(HybridTrainingConfig):
        value = getattr(args, item.name, None)
        if value is not None and item.name != "stage_weights":
            values[item.name] = value
    if args.stage_weights is not None:
        try:
            values["stage_weights"] = tuple(float(v) for v in args.stage_weights.split(","))
        except ValueError:
            raise SystemExit(f"--stage-weights must be three comma-separated numbers, got {args.stage_weights!r}") from None
    if args.quick:
        values.setdefault("steps", 6)
        values.setdefault("batch_size", 2)
        values.setdefault("checkpoint_every", 3)
    return HybridTrainingConfig(**values)


def run(args: argparse.Namespace) -> int:
    import torch

    from hyco_rag.cli.train import command_line
    from hyco_rag.engine.registry import get_compressor
    from hyco_rag.hybrid.training.data import QAItem, qa_items
    from hyco_rag.hybrid.training.trainer import HybridTrainer
    from hyco_rag.models import load_causal_lm, resolve_causal_lm
    from hyco_rag.models.cache import cache_dir
    from hyco_rag.results import environment, write_json_atomic, write_text_atomic

    torch.set_num_threads(args.threads)
    config = _config(args)
    started = time.perf_counter()
    model, tokenizer = load_causal_lm(resolve_causal_lm(args.model), device=args.device)
    squad = 12 if args.quick else args.squad_questions
    items = qa_items(
        squad_questions=squad,
        multihop=not (args.no_multihop or args.quick),
        seed=config.seed,
        same_article=args.distractors,
        retrieved=args.retrieved,
    )
    heldout = _heldout(6 if args.quick else args.heldout_questions, config.seed, args.distractors, args.retrieved, QAItem)
    logger.info("%d training questions, %d held out", len(items), len(heldout))
    trainer = HybridTrainer(
        model,
        tokenizer,
        items,
        get_compressor(args.compressor),
        config,
        output=args.output,
        cache_dir=Path(args.cache_dir) if args.cache_dir else cache_dir() / "hybrid-training",
    )
    trainer.prepare()
    log = trainer.train()
    checks = {
        control or "soft": round(trainer.answer_nll(heldout, control=control), 4)
        for control in (None, "zero_soft", "shuffled_soft")
    }
    logger.info("held-out answer NLL: %s", checks)
    output = Path(args.output)
    trainer.adapter.save_pretrained(output)
    command = command_line(args)
    report = trainer.report(
        log,
        {
            "heldout_answer_nll": checks,
            "heldout_questions": len(heldout),
            "seconds": round(time.perf_counter() - started, 1),
            "threads": args.threads,
            "command": command,
            "environment": environment(),
        },
    )
    write_json_atomic(output / "training_report.json", report)
    write_text_atomic(output / "README.md", _readme(report))
    print(f"hybrid adapter written to {output}; held-out answer NLL {checks}")
    return 0


def _heldout(limit: int, seed: int, same_article: int, retrieved: int, item_type: Any) -> list[Any]:
    """Questions of the SQuAD train articles the compressor holds out (never trained on here),
    with the training questions' distractor layout."""
    from hyco_rag.compression.training.data import squad_groups

    groups = (
        squad_groups(split="holdout", limit=limit, seed=seed, num_same_article=same_article, num_retrieved=retrieved)
        if limit
        else []
    )
    return [
        item_type(g.id, g.query, list(g.answers), [p.text for p in g.passages], g.source)
        for g in groups
        if g.fine_labels and g.answers
    ][:limit]


def _readme(report: dict[str, Any]) -> str:
    checks = report["heldout_answer_nll"]
    lines = [
        "# Hybrid adapter (HyCo2 soft tokens)",
        "",
        f"Trained by `{report['command']}` in {report['seconds']:.0f} s on {report['threads']} CPU thread(s).",
        "",
        f"- {report['adapter']['num_parameters']:,} parameters, {report['adapter']['num_soft_tokens']} soft tokens, "
        f"width {report['adapter']['width']}",
        f"- {report['questions']} training questions ({report['sources']}), {report['passages']} passages",
        f"- {report['config']['steps']} steps of {report['config']['batch_size']}, stage weights {report['config']['stage_weights']}",
        "",
        f"Held-out answer NLL ({report['heldout_questions']} SQuAD train questions from held-out articles): "
        f"own soft tokens {checks['soft']}, zeroed {checks['zero_soft']}, another question's {checks['shuffled_soft']}.",
        "",
    ]
    return "\n".join(lines)
