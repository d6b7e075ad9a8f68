"""`hyco-rag train compressor`: train the HyCo compressor on real QA data.

Steps: build listwise groups (SQuAD v1.1 train + the multi-hop train splits; see
:mod:`hyco_rag.compression.training.data` for what is held out), drop paragraphs shared with
an evaluation set and check that none is left (fails otherwise), distil soft
sentence labels from the reader on a small subset (cached), encode the training chunks once
with the frozen backbone (cached), train the heads, save ``config.json`` +
``model.safetensors`` atomically, and report answer recall on SQuAD v1.1 dev and on the
held-out multi-hop questions.

``--quick`` trains a few steps on a handful of questions (seconds; used by the tests).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from hyco_rag.cli.train import command_line

logger = logging.getLogger(__name__)


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    """Add the pipeline's arguments (called by :mod:`hyco_rag.cli.train`)."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--output", default="hyco-compressor", help="folder to write the trained compressor to")
    parser.add_argument("--quick", action="store_true", help="a few steps on a few questions (seconds)")
    parser.add_argument("--encoder", default=None, help="backbone (HF id or folder; default: embedded all-MiniLM-L6-v2)")
    parser.add_argument("--squad-questions", type=int, default=900, help="SQuAD v1.1 train questions with every label")
    parser.add_argument(
        "--passage-only-questions",
        type=int,
        default=300,
        help="further SQuAD v1.1 train questions with passage labels only (other paragraphs)",
    )
    parser.add_argument("--no-multihop", action="store_true", help="leave out the HotpotQA/MuSiQue/2Wiki training share")
    parser.add_argument("--multihop-passages", type=int, default=4, help="passages per multi-hop group")
    parser.add_argument(
        "--distill-examples",
        type=int,
        default=60,
        help="SQuAD groups given reader-distilled soft labels (and half as many per multi-hop set)",
    )
    parser.add_argument("--distill-time-limit", type=float, default=None, help="stop distilling after this many seconds")
    parser.add_argument("--cache-dir", default=None, help="distillation and feature caches (default: the hyco-rag cache)")
    parser.add_argument("--epochs", type=float, default=None, help="passes over the groups (default 8; LoRA: 2)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--groups-per-step", type=int, default=8, help="listwise groups per step")
    parser.add_argument("--lora-rank", type=int, default=0, help="low-rank deltas on the upper layers (0: heads only)")
    parser.add_argument("--exit-layer", type=int, default=3, help="layers of the coarse (early-exit) pass")
    parser.add_argument(
        "--attention",
        choices=("asymmetric", "full"),
        default="asymmetric",
        help="passage side blind to the query (frozen backbone) or joint attention (with --lora-rank)",
    )
    parser.add_argument("--eval-questions", type=int, default=200, help="SQuAD v1.1 dev questions for the recall check")
    parser.add_argument("--eval-multihop", type=int, default=30, help="held-out questions per multi-hop set to check")
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="do not train: evaluate the compressor already in --output (report: eval_report.json)",
    )
    parser.add_argument(
        "--eval-granularities",
        default=None,
        help="comma list of word,clause,sentence: also compare selection granularities on the same scores",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 is faster on an oversubscribed CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=None, help="stop training (and save) after this many seconds")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output")
    parser.set_defaults(handler=run)


def _select_groups(args: argparse.Namespace, distilled: dict) -> list:
    from hyco_rag.compression.training.data import (
        check_no_leak,
        evaluation_texts,
        multihop_groups,
        remove_eval_paragraphs,
        squad_groups,
    )
    from hyco_rag.compression.training.distill import _key

    squad = squad_groups(seed=args.seed, limit=args.squad_questions, passage_only_limit=args.passage_only_questions)
    answered = [g for g in squad if g.fine_labels]
    passage_only = [g for g in squad if not g.fine_labels]
    # Questions that already have distilled labels first, so the cache is used.
    answered.sort(key=lambda g: _key(g) not in distilled)
    groups = answered + passage_only
    if not args.no_multihop:
        groups += multihop_groups(max_passages=args.multihop_passages, seed=args.seed)
    eval_paragraphs, eval_questions = evaluation_texts()
    groups = remove_eval_paragraphs(groups, eval_paragraphs, eval_questions)
    args._leak_check = check_no_leak(groups, eval_paragraphs, eval_questions)  # raises on any overlap
    random.Random(args.seed).shuffle(groups)
    return groups


def _distill_subset(groups: list, n: int, distilled: dict) -> list:
    """``n`` answerable SQuAD groups and ``n/2`` of each multi-hop source, already-cached ones first."""
    from hyco_rag.compression.training.distill import _key

    by_source: dict[str, list] = {}
    for group in groups:
        if group.fine_labels:
            by_source.setdefault(group.source, []).append(group)
    chosen = []
    for source, items in by_source.items():
        items = sorted(items, key=lambda g: _key(g) not in distilled)
        chosen += items[: n if source == "squad" else n // 2]
    return chosen


def run(args: argparse.Namespace) -> int:
    import torch

    from hyco_rag.compression.config import CompressorConfig
    from hyco_rag.compression.training.distill import distill, load_cache
    from hyco_rag.compression.training.trainer import (
        TrainConfig,
        Trainer,
        describe_groups,
        feature_key,
        load_features,
        save_features,
    )
    from hyco_rag.models import DEFAULT_ENCODER
    from hyco_rag.models.cache import cache_dir

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if args.quick:
        args.squad_questions, args.passage_only_questions, args.no_multihop = 4, 2, True
        args.distill_examples, args.eval_questions, args.eval_multihop = 0, 0, 0
        args.max_steps = args.max_steps or 3
        args.groups_per_step = 2
    granularities = _granularities(args.eval_granularities)
    if args.eval_only:
        from hyco_rag.results import write_json_atomic

        eval_report: dict[str, Any] = {
            "command": command_line(args),
            "eval": evaluate(args.output, args.eval_questions, args.eval_multihop, args.device, granularities),
        }
        write_json_atomic(Path(args.output) / "eval_report.json", eval_report)
        print(json.dumps(eval_report["eval"], indent=1))
        return 0
    started = time.perf_counter()
    cache = Path(args.cache_dir) if args.cache_dir else cache_dir() / "compressor-training"
    cache.mkdir(parents=True, exist_ok=True)
    distill_path = cache / "distilled-sentence-labels.json"
    distilled = load_cache(distill_path)

    config = CompressorConfig(
        encoder=args.encoder or DEFAULT_ENCODER, lora_rank=args.lora_rank, exit_layer=args.exit_layer, attention=args.attention
    )
    groups = _select_groups(args, distilled)
    if args.distill_examples > 0:
        subset = _distill_subset(groups, args.distill_examples, distilled)
        distilled = distill(subset, distill_path, max_examples=len(subset), time_limit_s=args.distill_time_limit)
    from hyco_rag.compression.training.distill import soft_labels_for

    n_soft = sum(1 for g in groups if soft_labels_for(g, distilled) is not None)
    config.training = {
        "data": describe_groups(groups),
        "distilled_groups": n_soft,
        "train_files": _train_files(args),
        "held_out": "SQuAD v1.1 dev and the cs224n v2.0 files (all); HotpotQA hotpotqa-train/hotpotqa_train.json "
        "(100); 2Wiki train-500 rows 0-99; MuSiQue musique-train (all 100, never trained on); last 2 "
        "SQuAD v1.1 train articles (tuning)",
        "leak_check": dict(getattr(args, "_leak_check", {}), passed=True),
        "command": command_line(args),
    }
    epochs = args.epochs if args.epochs is not None else (8.0 if args.lora_rank == 0 else 2.0)
    train_config = TrainConfig(
        epochs=epochs,
        max_steps=args.max_steps,
        groups_per_step=args.groups_per_step,
        seed=args.seed,
        time_limit_s=args.time_limit,
    )
    trainer = Trainer(config, train_config, groups, args.output, distilled=distilled, device=args.device, resume=args.resume)
    prepared = trainer.prepare()
    features = None
    if config.lora_rank == 0:
        key = feature_key(config, [p.group for p in prepared])
        feature_path = cache / f"features-{key}.safetensors"
        features = load_features(feature_path, key)
        if features is None:
            features = trainer.extract_features(prepared)
            if not args.quick:
                save_features(feature_path, features, key)
        else:
            logger.info("reusing encoded training chunks from %s", feature_path)
    trainer.train(features=features, prepared=prepared)
    elapsed = time.perf_counter() - started
    report: dict[str, Any] = {
        "seconds_total": round(elapsed, 1),
        "steps": trainer.step,
        "groups": len(prepared),
        "data": describe_groups(groups),
        "distilled_groups": n_soft,
    }
    if args.eval_questions > 0 or args.eval_multihop > 0:
        report["eval"] = evaluate(args.output, args.eval_questions, args.eval_multihop, args.device, granularities)
    from hyco_rag.results import write_json_atomic

    write_json_atomic(Path(args.output) / "training_report.json", report)
    print(f"saved {args.output} ({trainer.step} steps, {elapsed / 60:.1f} min)")
    if "eval" in report:
        for name, result in report["eval"].items():
            if "recall" not in result:
                continue
            recall = "  ".join(f"1/{round(1 / float(r))}: {100 * v:.1f}%" for r, v in result["recall"].items())
            print(f"answer recall {name} ({result['questions']} q): {recall}")
    return 0


def _granularities(text: str | None) -> tuple[str, ...] | None:
    from hyco_rag.compression.words import GRANULARITIES

    if not text:
        return None
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in GRANULARITIES]
    if unknown or not names:
        raise ValueError(f"--eval-granularities takes a comma list of {', '.join(GRANULARITIES)}, got {text!r}")
    return names


def evaluate(
    model_dir: str | Path,
    squad_questions: int,
    multihop_questions: int,
    device: str | None,
    granularities: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Answer recall on SQuAD v1.1 dev (10 passages, same-article distractors) and held-out multi-hop."""
    from hyco_rag.compression import HyCoCompressor
    from hyco_rag.compression.training.data import holdout_multihop
    from hyco_rag.compression.training.evaluate import answer_recall
    from hyco_rag.data import load_squad
    from hyco_rag.models import load_tokenizer

    compressor = HyCoCompressor.from_pretrained(model_dir, device=device)
    reader_tokenizer = load_tokenizer()
    out: dict[str, Any] = {}
    if squad_questions > 0:
        examples = load_squad()
        random.Random(1).shuffle(examples)
        out["squad_v1.1_dev"] = answer_recall(
            compressor, examples[:squad_questions], target_tokenizer=reader_tokenizer, granularities=granularities
        )
    if multihop_questions > 0:
        for name, examples in holdout_multihop().items():
            examples = [e for e in examples if any(a.lower() not in ("yes", "no") for a in e.answers)]
            out[f"{name}_heldout"] = answer_recall(
                compressor, examples[:multihop_questions], target_tokenizer=reader_tokenizer, granularities=granularities
            )
    return out


def _train_files(args: argparse.Namespace) -> list[str]:
    from hyco_rag.compression.training.data import SPLITS, SQUAD_TRAIN_FILE

    files = [SQUAD_TRAIN_FILE]
    if not args.no_multihop:
        files += [
            f"{path} rows {start}-{'end' if stop is None else stop - 1}"
            for split in SPLITS.values()
            for path, (start, stop) in split["train"]
        ]
    return files
