"""HyCo2's hybrid view against its parts and controls, through the serving engine (issue 14).

Settings: SQuAD v1.1 dev (the gold paragraph among 9 same-article distractors; never trained
on) and HotpotQA's held-out split (10 titled paragraphs; the only multi-hop family whose held-out
split the adapter never saw in training).  Reader: the served SmolLM2 with the two-shot
short-answer prompt (:data:`hyco_rag.prompts.SHORT_ANSWER_TEMPLATE`) for every row.

Rows (``mode``), all in one run, on the same questions, greedy, ``max_tokens`` 16:

=================  =====================================================================
``full``           every passage, uncompressed (``rag``)
``oracle``         the gold paragraph(s) alone (``rag``)
``hard``           the compressor's kept text at 1/8 of the passage tokens (``hyco``)
``soft``           the soft tokens alone (``hybrid`` with a budget of k)
``mlp_only``       hybrid at 1/8, the MLP branch alone
``qformer_only``   hybrid at 1/8, the Q-Former branch alone
``hybrid``         soft tokens + kept text, 1/8 in all (soft tokens counted)
``zero_soft``      hybrid's prompt with the soft tokens zeroed (what the kept text does alone
                   in the hybrid layout: the format control)
``shuffled_soft``  hybrid's prompt with another question's soft tokens (the knowledge control)
``combine_hybrid`` hybrid + the DyPRAG deltas of the passages (``combine-hybrid``)
=================  =====================================================================

``full``, ``mlp_only``, ``qformer_only`` and ``combine_hybrid`` run on the first
``--ablation-questions`` (default 100) of the sample, which is nested: on 2 CPU cores the full
context alone costs as much as all other rows together.  Their differences pair with the other
rows on those questions.

Reported per row: EM, F1, answer contained in the reply, context tokens (soft counted) and time
to first token (prepare + prefill, one request at a time on the first ``--ttft-questions``);
paired bootstrap 95% intervals of hybrid minus hard, soft-using rows minus their controls.

    python benchmarks/hybrid_qa.py                         # 200 SQuAD + 100 HotpotQA, ~30 min on 2 cores
    python benchmarks/hybrid_qa.py --squad 20 --hotpotqa 0 # minutes

Writes ``benchmarks/results/hybrid_qa-<UTC timestamp>.json`` (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from hyco_rag.results import format_table, write_results  # noqa: E402

logger = logging.getLogger("hybrid_qa")

#: In run order: the core comparison and its controls first, the full context (the longest) last.
MODES = ("hard", "hybrid", "zero_soft", "shuffled_soft", "soft", "oracle", "mlp_only", "qformer_only", "combine_hybrid", "full")
#: Rows run on the first ``--ablation-questions`` only (the sample is nested, so they pair with
#: the other rows on those questions): the full context is 10x the prompt of the others.
ABLATIONS = ("full", "mlp_only", "qformer_only", "combine_hybrid")
RATE = 1 / 8


@dataclass
class Question:
    id: str
    question: str
    answers: list[str]
    passages: list[str]
    gold: list[str]


def load_questions(setting: str, limit: int, seed: int) -> list[Question]:
    from hyco_rag.evaluation.qa_eval import document_texts, load_examples

    examples = load_examples(setting, limit, seed=seed, num_distractors=9)
    out = []
    for example in examples:
        texts = document_texts(example, with_titles=setting != "squad")
        out.append(Question(example.id, example.question, list(example.answers), texts, [texts[i] for i in example.gold]))
    return out


def _request_args(
    mode: str, q: Question, budget: int, k: int, soft: dict[str, torch.Tensor], partner: dict[str, str]
) -> tuple[str, list[str], dict[str, Any]]:
    """(engine mode, documents, extra prepare arguments) of one row for one question."""
    if mode == "full":
        return "rag", q.passages, {}
    if mode == "oracle":
        return "rag", q.gold, {}
    if mode == "hard":
        return "hyco", q.passages, {"target_tokens": budget}
    if mode == "soft":
        return "hybrid", q.passages, {"target_tokens": k}
    if mode in ("mlp_only", "qformer_only"):
        return "hybrid", q.passages, {"target_tokens": budget, "soft_branch": mode.split("_")[0]}
    if mode == "hybrid":
        return "hybrid", q.passages, {"target_tokens": budget}
    if mode == "zero_soft":
        return "hybrid", q.passages, {"target_tokens": budget, "soft_embeds": torch.zeros_like(soft[q.id])}
    if mode == "shuffled_soft":
        return "hybrid", q.passages, {"target_tokens": budget, "soft_embeds": soft[partner[q.id]]}
    if mode == "combine_hybrid":
        return "combine-hybrid", q.passages, {"target_tokens": budget}
    raise ValueError(f"unknown row {mode!r}")


def run_setting(
    engine: Any,
    setting: str,
    questions: Sequence[Question],
    modes: Sequence[str],
    args: argparse.Namespace,
    on_row: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, float]]]]:
    from tqdm.auto import tqdm

    from hyco_rag.engine import SamplingParams
    from hyco_rag.evaluation.parametric import derangement
    from hyco_rag.metrics import answer_in_text, best_exact_match, best_f1

    k = engine.hybrid.num_soft_tokens
    sampling = SamplingParams(max_tokens=args.max_tokens)
    budgets = {q.id: max(k + 1, round(sum(engine.count_tokens(t) for t in q.passages) * RATE)) for q in questions}
    partner_index = derangement([q.passages[0] + q.question for q in questions], seed=args.seed)
    partner = {q.id: questions[j].id for q, j in zip(questions, partner_index)}
    soft: dict[str, torch.Tensor] = {}
    if any(m in ("zero_soft", "shuffled_soft") for m in modes):
        for q in tqdm(questions, desc=f"{setting} soft tokens", unit="q"):
            soft[q.id] = engine.soft_tokens(q.question, q.passages)
    rows, per_question = [], {}
    for mode in modes:
        started = time.perf_counter()
        requests = []
        asked = questions[: args.ablation_questions] if mode in ABLATIONS and args.ablation_questions else questions
        for q in tqdm(asked, desc=f"{setting} {mode} prepare", unit="q"):
            engine_mode, documents, extra = _request_args(mode, q, budgets[q.id], k, soft, partner)
            requests.append(engine.ask(q.question, documents, mode=engine_mode, **extra))
        completions = []
        for start in range(0, len(requests), args.batch):
            completions.extend(engine.generate_many(requests[start : start + args.batch], sampling))
        scores = [
            {
                "em": 100 * best_exact_match(c.text, q.answers),
                "f1": 100 * best_f1(c.text, q.answers),
                "contains": 100.0 * answer_in_text(c.text, q.answers),
            }
            for q, c in zip(asked, completions)
        ]
        per_question[mode] = scores
        ttft = []
        for q in asked[: args.ttft_questions]:
            engine_mode, documents, extra = _request_args(mode, q, budgets[q.id], k, soft, partner)
            t0 = time.perf_counter()
            request = engine.ask(q.question, documents, mode=engine_mode, **extra)
            for _ in engine.stream(request, SamplingParams(max_tokens=1)):
                pass
            ttft.append(time.perf_counter() - t0)
        n = len(asked)
        rows.append(
            {
                "setting": setting,
                "mode": mode,
                "n": n,
                "em": round(sum(s["em"] for s in scores) / n, 2),
                "f1": round(sum(s["f1"] for s in scores) / n, 2),
                "contains": round(sum(s["contains"] for s in scores) / n, 2),
                "context_tokens": round(sum(r.context_tokens for r in requests) / n, 1),
                "soft_tokens": round(sum(r.soft_tokens for r in requests) / n, 1),
                "prompt_tokens": round(sum(r.prompt_tokens for r in requests) / n, 1),
                "ttft_s": round(sum(ttft) / len(ttft), 3) if ttft else None,
                "seconds": round(time.perf_counter() - started, 1),
                "examples": [{"id": q.id, "answer": c.text} for q, c in list(zip(asked, completions))[:5]],
            }
        )
        logger.info(
            "%s %s: F1 %.1f EM %.1f contains %.1f (%.0f s)",
            setting,
            mode,
            rows[-1]["f1"],
            rows[-1]["em"],
            rows[-1]["contains"],
            rows[-1]["seconds"],
        )
        on_row(rows)
    return rows, per_question


def differences(setting: str, per_question: dict[str, list[dict[str, float]]], seed: int) -> list[dict[str, Any]]:
    from hyco_rag.evaluation.parametric import bootstrap_diff

    pairs = [
        ("hybrid", "hard"),
        ("hybrid", "zero_soft"),
        ("hybrid", "shuffled_soft"),
        ("hybrid", "mlp_only"),
        ("hybrid", "qformer_only"),
        ("hybrid", "full"),
        ("soft", "zero_soft"),
        ("combine_hybrid", "hybrid"),
    ]
    out = []
    for a, b in pairs:
        if a in per_question and b in per_question:
            n = min(len(per_question[a]), len(per_question[b]))  # ablation rows: their first n questions
            for metric in ("f1", "em"):
                stats = bootstrap_diff(
                    [s[metric] for s in per_question[a][:n]], [s[metric] for s in per_question[b][:n]], seed=seed
                )
                out.append(
                    {"setting": setting, "a": a, "b": b, "metric": metric, **{key: round(v, 2) for key, v in stats.items()}}
                )
    return out


def targets(diffs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets on SQuAD, each with the figures it was judged on."""

    def diff(a: str, b: str) -> dict[str, Any] | None:
        return next((d for d in diffs if d["setting"] == "squad" and d["a"] == a and d["b"] == b and d["metric"] == "f1"), None)

    out: dict[str, Any] = {}
    vs_hard = diff("hybrid", "hard")
    if vs_hard:
        out["hybrid_beats_hard_by_2_f1"] = {"met": vs_hard["diff"] >= 2 and vs_hard["ci95_low"] > 0, **vs_hard}
    for other in ("mlp_only", "qformer_only", "full", "shuffled_soft"):
        paired = diff("hybrid", other)  # on the questions both rows ran
        if paired:
            met = paired["diff"] >= 0 if other == "full" else paired["diff"] > 0
            out[f"hybrid_vs_{other}"] = {"met": met, **paired}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--squad", type=int, default=200, help="SQuAD v1.1 dev questions")
    parser.add_argument("--hotpotqa", type=int, default=100, help="held-out HotpotQA questions (0: skip)")
    parser.add_argument("--modes", default=",".join(MODES), help="rows to run")
    parser.add_argument("--adapter", default=None, help="hybrid adapter folder (default: the shipped one)")
    parser.add_argument("--translator", default=None, help="DyPRAG translator (default: the shipped one)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16, help="requests decoded together")
    parser.add_argument("--ttft-questions", type=int, default=4, help="questions timed one at a time per row")
    parser.add_argument(
        "--ablation-questions", type=int, default=100, help=f"questions of the rows {', '.join(ABLATIONS)} (0: all)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(MODES)}")

    from hyco_rag.engine import Engine, EngineConfig
    from hyco_rag.prompts import SHORT_ANSWER_TEMPLATE

    engine = Engine.from_pretrained(
        None,
        args.translator,
        device=args.device,
        config=EngineConfig(max_batch_size=args.batch, max_queue=4 * args.batch, timeout_s=None),
        template=SHORT_ANSWER_TEMPLATE,
        hybrid=args.adapter,
    )
    rows: list[dict[str, Any]] = []
    diffs: list[dict[str, Any]] = []
    stem = "hybrid_qa-" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    def save_partial(setting_rows: list[dict[str, Any]]) -> None:  # an interrupted run keeps its rows
        write_results(stem, rows + setting_rows, config={**vars(args), "rate": RATE, "partial": True}, timestamp=False)

    try:
        for setting, limit in (("squad", args.squad), ("hotpotqa", args.hotpotqa)):
            if limit <= 0:
                continue
            questions = load_questions(setting, limit, args.seed)
            setting_rows, per_question = run_setting(engine, setting, questions, modes, args, save_partial)
            rows += setting_rows
            diffs += differences(setting, per_question, args.seed)
    finally:
        engine.close()
    found = targets(diffs)
    columns = ["setting", "mode", "n", "em", "f1", "contains", "context_tokens", "soft_tokens", "ttft_s"]
    print(format_table([{c: r[c] for c in columns} for r in rows], columns))
    print(format_table(diffs, ["setting", "a", "b", "metric", "diff", "ci95_low", "ci95_high", "n"]))
    for name, value in found.items():
        print(f"{name}: {'met' if value['met'] else 'NOT met'} {value}")
    config = {
        **vars(args),
        "rate": RATE,
        "adapter": asdict(engine.hybrid.adapter.config) if rows else None,
        "differences": diffs,
        "targets": found,
    }
    path = write_results(stem, rows, config=config, timestamp=False)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
