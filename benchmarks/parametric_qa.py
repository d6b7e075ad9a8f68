"""Parametric QA benchmark: DyPRAG / PRAG deltas vs context, with the controls that decide a claim.

Sections (rows carry ``section``, ``setting``, ``mode``, ``n``, ``em``, ``f1``, ``contains``):

* ``synthetic`` / ``cards``: invented entity cards (closed-book at chance by construction),
  multiple choice by answer log-likelihood among the attribute's whole pool (``mc_accuracy``)
  plus greedy answer-contained; PRAG own vs shuffled on a subset (the upper reference).
* ``squad`` / ``gold``: SQuAD v1.1 dev questions with their gold passage; ``rag`` under the
  plain and the two-shot short-answer prompt, every other mode under the short one.
* ``squad`` / ``top3``: gold + 2 same-article distractors, the passages' deltas combined by
  ``mean``, ``sum`` or the delta of their ``concat``enated text (``combine_rule``).

Paired bootstrap 95% intervals on own-minus-shuffled go under ``differences`` in the JSON.  The
logic lives in :mod:`hyco_rag.evaluation.parametric` and :mod:`hyco_rag.evaluation.synthetic`;
docs/parametric_benchmark.md has the figures and the exact command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("parametric_qa")

SYNTHETIC_MODES = ("none", "rag", "format_only", "dyprag", "dyprag_shuffled", "combine", "combine_shuffled")
SQUAD_MODES = ("none", "rag", "format_only", "dyprag", "dyprag_shuffled", "combine", "combine_shuffled")
TOP3_MODES = ("dyprag", "dyprag_shuffled")


def _modes(text: str, allowed: Sequence[str], parser: argparse.ArgumentParser, flag: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in allowed]
    if bad:
        parser.error(f"{flag}: unknown mode(s) {bad}; choose from {','.join(allowed)}")
    return modes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", type=int, default=300, help="held-out synthetic cards (one question each) for dyprag / dyprag_shuffled")
    parser.add_argument("--cards-other", type=int, default=None, help="cards for the other synthetic modes (default: --cards; the first of the same cards)")
    parser.add_argument("--synthetic-modes", default=",".join(SYNTHETIC_MODES))
    parser.add_argument("--greedy-modes", default="none,rag,dyprag,dyprag_shuffled,prag,prag_shuffled",
                        help="synthetic modes that also get a greedy answer (answer-contained)")
    parser.add_argument("--prag-cards", type=int, default=12, help="cards PRAG trains a LoRA for (0: skip)")
    parser.add_argument("--prag-epochs", type=int, default=10)
    parser.add_argument("--squad", type=int, default=200, help="SQuAD v1.1 dev questions (gold setting)")
    parser.add_argument("--squad-modes", default=",".join(SQUAD_MODES))
    parser.add_argument("--top3", type=int, default=100, help="questions of the top-3 setting (0: skip)")
    parser.add_argument("--top3-rules", default="sum,mean,concat", help="the first also gets the shuffled control")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--translator", default=None, help="translator folder (default: the shipped one)")
    parser.add_argument("--model", default=None, help="reader (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--work", default="runs/parametric_qa", help="partial results (a rerun resumes)")
    parser.add_argument("--results-dir", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: an end-to-end check in a few minutes")
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--gpu-layers", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from hyco_rag.evaluation.parametric import COMBINE_RULES

    args.synthetic_modes = _modes(args.synthetic_modes, SYNTHETIC_MODES, parser, "--synthetic-modes")
    args.greedy_modes = _modes(args.greedy_modes, (*SYNTHETIC_MODES, "prag", "prag_shuffled"), parser, "--greedy-modes")
    args.squad_modes = _modes(args.squad_modes, SQUAD_MODES, parser, "--squad-modes")
    args.top3_rules = _modes(args.top3_rules, COMBINE_RULES, parser, "--top3-rules")
    if args.cards_other is None:
        args.cards_other = args.cards
    args.cards_other = min(args.cards_other, args.cards)
    for name in ("cards", "cards_other", "prag_cards", "squad", "top3", "max_new_tokens", "batch_size", "threads"):
        if getattr(args, name) < (1 if name in ("max_new_tokens", "batch_size", "threads") else 0):
            parser.error(f"--{name.replace('_', '-')} must be >= {1 if name in ('max_new_tokens', 'batch_size', 'threads') else 0}")
    if args.quick:
        args.cards, args.cards_other, args.prag_cards, args.squad, args.top3, args.prag_epochs = 6, 4, 2, 6, 4, 1
        args.max_new_tokens = 6
    return args


class Partial:
    """Rows finished so far, on disk: a rerun with the same settings skips them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str) -> list[dict[str, Any]] | None:
        return self.rows.get(key)

    def put(self, key: str, rows: list[dict[str, Any]]) -> None:
        from hyco_rag.results import write_json_atomic

        self.rows[key] = rows
        write_json_atomic(self.path, self.rows)


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any], Path]:
    import hashlib

    import torch

    from hyco_rag.dyprag.encoding import PassageEncoder
    from hyco_rag.dyprag.training.distill import check_no_overlap
    from hyco_rag.dyprag.translator import DEFAULT_TRANSLATOR_DIR, ParameterTranslator
    from hyco_rag.evaluation import parametric as P
    from hyco_rag.evaluation.synthetic import make_cards, probe_questions
    from hyco_rag.generation import ChatGenerator, GenerationConfig
    from hyco_rag.prompts import TEMPLATES
    from hyco_rag.results import format_table, write_json_atomic, write_results, write_text_atomic

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = _load_average()
    generator = ChatGenerator.from_pretrained(args.model, device="cpu")
    model, tokenizer = generator.model, generator.tokenizer
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    translator_dir = Path(args.translator) if args.translator else DEFAULT_TRANSLATOR_DIR
    translator = ParameterTranslator.from_pretrained(translator_dir, model=model)
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, stop_at_newline=True)
    reader = P.DeltaReader(generator, generation, TEMPLATES["short"])
    plain_reader = P.DeltaReader(generator, generation, TEMPLATES["plain"])
    source = P.DeltaSource(translator, PassageEncoder(model, tokenizer))
    notes: list[str] = []

    cards = make_cards(args.cards, "eval", seed=args.seed)
    questions = probe_questions(cards, seed=args.seed)
    items = P.squad_items(max(args.squad, args.top3), seed=args.seed, distractors=2)
    keys = P.training_keys(translator_dir)
    if keys is None:
        notes.append(f"leak check not possible: {translator_dir} has no training_passages.txt")
    else:
        check_no_overlap(keys, [t for it in items for t in it.passages], "SQuAD v1.1 dev questions of this run")
        check_no_overlap(keys, [c.text for c in cards], "synthetic evaluation cards")
        notes.append(f"leak check passed: none of the {len(keys)} training passages is an evaluation passage")

    digest = hashlib.sha1((translator_dir / "model.safetensors").read_bytes()).hexdigest()[:12]
    # Sections are keyed by their own sizes, so a rerun with other sizes keeps the sections it shares.
    fingerprint = json.dumps({k: getattr(args, k) for k in ("seed", "max_new_tokens", "batch_size", "model", "quick")}, sort_keys=True, default=str)
    partial = Partial(Path(args.work) / f"partial-{hashlib.sha1((fingerprint + digest).encode()).hexdigest()[:12]}.json")
    progress = not args.no_progress
    rows: list[dict[str, Any]] = []

    def section(key: str, compute: Any) -> None:
        done = partial.get(key)
        if done is None:
            logger.info("running %s", key)
            done = compute()
            partial.put(key, done)
        rows.extend(done)
        print(format_table(P.strip_private(done), ["section", "setting", "mode", "combine_rule", "prompt", "n", "em", "f1", "contains", "mc_accuracy"]), flush=True)

    # 1. synthetic probe
    for mode in args.synthetic_modes:
        count = args.cards if mode in ("dyprag", "dyprag_shuffled") else args.cards_other
        section(f"synthetic:{mode}:n={count}:greedy={mode in args.greedy_modes}",
                lambda mode=mode, count=count: P.run_synthetic(reader, source, questions[:count], [mode], greedy=mode in args.greedy_modes, seed=args.seed, progress=progress))
    if args.prag_cards:
        subset = questions[: args.prag_cards]

        def prag_rows() -> list[dict[str, Any]]:
            deltas, status = P.train_prag_cards(model, tokenizer, subset, epochs=args.prag_epochs)
            out = P.run_synthetic(reader, source, subset, ["prag", "prag_shuffled"], greedy=True, prag_deltas=deltas, seed=args.seed, progress=progress)
            for row in out:
                row.update(status)
            # the same subset without deltas / with the translator, for a like-for-like view
            out += [dict(r, setting="cards_prag_subset") for r in P.run_synthetic(reader, source, subset, ["none", "dyprag", "dyprag_shuffled"], greedy=True, seed=args.seed, progress=progress)]
            return out

        section(f"synthetic:prag:n={args.prag_cards}:epochs={args.prag_epochs}", prag_rows)
    # 2. SQuAD gold passage
    gold = items[: args.squad]
    section(f"squad:gold:rag:plain:n={args.squad}", lambda: P.run_squad(plain_reader, source, gold, ["rag"], prompt_name="plain", seed=args.seed, progress=progress))
    for mode in args.squad_modes:
        section(f"squad:gold:{mode}:n={args.squad}", lambda mode=mode: P.run_squad(reader, source, gold, [mode], seed=args.seed, progress=progress))
    # 3. top-3: combining passages
    if args.top3:
        top = items[: args.top3]
        for rule in args.top3_rules:
            # The shuffled control runs for the first rule only (it is a property of the deltas, not of the rule).
            for mode in TOP3_MODES if rule == args.top3_rules[0] else ("dyprag",):
                section(f"squad:top3:{mode}:{rule}:n={args.top3}", lambda mode=mode, rule=rule: P.run_squad(reader, source, top, [mode], setting="top3", rule=rule, seed=args.seed, progress=progress))
    # 4. cost of translation vs the prompt tokens it replaces
    cost = P.translation_cost(reader, source, items, count=3 if args.quick else 8)
    # 5. GPU section
    gpu_rows, gpu_status = P.run_gpu_section(not args.no_gpu, model_layers=args.gpu_layers, quick=args.quick)
    rows.extend(gpu_rows)
    pairs = [("dyprag", "dyprag_shuffled"), ("combine", "combine_shuffled"), ("prag", "prag_shuffled"),
             ("dyprag", "format_only"), ("combine", "rag"), ("dyprag", "none")]
    diffs = P.differences([r for r in rows if "_per_question" in r], pairs, ["mc", "f1", "contains", "em"], seed=args.seed)
    config = {
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "args": {k: v for k, v in vars(args).items()},
        "translator": str(translator_dir), "translator_sha1": digest, "translator_parameters": translator.num_parameters(),
        "translator_training": _read_json(translator_dir / "training.json"),
        "prompt": "SHORT_ANSWER_TEMPLATE (two worked turns) for every mode; rag also under DEFAULT_TEMPLATE (prompt=plain)",
        "cost": cost, "gpu_section": gpu_status, "notes": notes, "differences": diffs,
        "load_average_before": load_before, "load_average_after": _load_average(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    public = [r for r in P.strip_private(rows)]
    per_question = {f"{r['section']}:{r['setting']}:{r['mode']}:{r.get('combine_rule')}:{r.get('prompt')}": r["_per_question"] for r in rows if "_per_question" in r}
    path = write_results("parametric_qa", public, config=config, results_dir=args.results_dir)
    write_json_atomic(path.with_name(path.stem + "-per_question.json"), per_question)
    write_text_atomic(path.with_suffix(".md"), markdown(public, diffs, cost))
    return public, config, path


def markdown(rows: Sequence[dict[str, Any]], diffs: Sequence[dict[str, Any]], cost: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return "" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)

    cols = ["section", "setting", "mode", "combine_rule", "prompt", "n", "em", "f1", "contains", "mc_accuracy", "mean_answer_words", "s_per_q"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows if r.get("section") != "gpu"]
    lines += ["", "| section | setting | a - b | rule | metric | diff | 95% CI | n |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {d['section']} | {d['setting']} | {d['a']} - {d['b']} | {fmt(d['combine_rule'])} | {d['metric']} | {d['diff']:+.1f} | "
              f"[{d['ci95_low']:+.1f}, {d['ci95_high']:+.1f}] | {d['n']} |" for d in diffs]
    lines += ["", "cost (ms, median): " + ", ".join(f"{k} {fmt(v)}" for k, v in cost.items())]
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    _, config, path = run(args, argv)
    print(f"results: {path}")
    for d in config["differences"]:
        print(f"  {d['section']}/{d['setting']} {d['a']} - {d['b']} ({d['metric']}, rule {d['combine_rule']}): "
              f"{d['diff']:+.1f} [{d['ci95_low']:+.1f}, {d['ci95_high']:+.1f}] n={d['n']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
