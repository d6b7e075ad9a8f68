"""Parametric RAG on SQuAD v1.1 dev: passages as context, as trained LoRAs, or as translated deltas.

Side by side in one run, with the embedded SmolLM2-135M-Instruct reader: ``none`` (closed
book), ``rag`` (passages in the prompt), ``prag`` / ``prag_combine`` (a LoRA per passage
trained *at query time* by the stage-1 PRAG trainer, without / with the passages),
``dyprag`` / ``combine`` (translator deltas, without / with the passages), ``combine_hyco``
(deltas + HyCo-compressed passages) and two controls, ``dyprag_shuffled`` /
``combine_shuffled``, which apply the deltas of *another* question's passages: a control
that scores like its real mode means the deltas help by answer format, not by content.

Settings ``gold`` (the gold-only oracle of docs/evaluation.md) and ``distractors``; a
knowledge-conflict probe (the gold paragraph with its answer swapped for another entity of
the same kind); a GPU section (CUDA only; otherwise a printed, recorded note) timing the
translator and the hooked forward for a Llama-3-8B-shaped model.  Columns, options and
results: docs/parametric_benchmark.md.

    python benchmarks/parametric_qa.py                               # defaults (hours on one CPU core)
    python benchmarks/parametric_qa.py --limit 20 --skip-prag        # cheap modes only
    python benchmarks/parametric_qa.py --quick                       # minutes-long check

CPU: torch runs with ``--threads`` (default 1).  On a shared 2-core machine, 2 OpenMP threads
competing with other jobs measured ~17x slower than 1 thread for the same generation.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import statistics
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("parametric_qa")

MODES = (
    "none", "rag", "prag", "prag_combine", "dyprag", "combine", "combine_hyco", "dyprag_shuffled", "combine_shuffled",
)
PRAG_MODES = ("prag", "prag_combine")
TRANSLATOR_MODES = ("dyprag", "combine", "combine_hyco", "dyprag_shuffled", "combine_shuffled")
#: Controls: the deltas of *another* question's passages (from another article).  If a control
#: scores like its real mode, the deltas help through answer format, not passage knowledge.
SHUFFLED_MODES = ("dyprag_shuffled", "combine_shuffled")
#: Runtime mode and where the deltas come from, per benchmark mode.
_RUNTIME_MODE = {
    "none": "none",
    "rag": "rag",
    "prag": "dyprag",
    "prag_combine": "combine",
    "dyprag": "dyprag",
    "combine": "combine",
    "combine_hyco": "combine",
    "dyprag_shuffled": "dyprag",
    "combine_shuffled": "combine",
}
GPU_TARGET_MS = 2.0

QA_COLUMNS = [
    "setting", "mode", "n", "em", "f1", "em_vs_oracle", "f1_vs_oracle", "n_sub", "f1_sub", "f1_sub_vs_oracle",
    "context_tokens", "prompt_tokens", "s_per_q", "s_per_q_pre_encoded", "translator_ms_per_passage",
    "prag_train_s_per_passage", "extra_bytes_per_passage",
]
CONFLICT_COLUMNS = ["mode", "n", "follows_passage", "follows_original", "neither", "f1_vs_swapped", "s_per_q"]
GPU_COLUMNS = ["measure", "shape", "ms", "ms_hooked", "overhead_pct", "ms_per_passage", "target_ms", "meets_target"]


# --------------------------------------------------------------------------- configuration


@dataclass
class BenchmarkConfig:
    """Everything that defines a run (recorded in the JSON)."""

    limit: int = 100
    distractors: int = 3
    modes: tuple[str, ...] = MODES
    prag_limit: int = 20
    skip_prag: bool = False
    conflict_limit: int = 50
    prag_qa: str = "siblings"
    prag_steps: int = 3
    prag_max_closed: int = 6
    max_new_tokens: int = 16
    batch_size: int = 8
    seed: int = 0
    threads: int = 1
    translator: str | None = None
    model: str | None = None
    quick: bool = False
    gpu: bool = True
    gpu_layers: int = 2
    hyco_rate: float = 0.25
    results_dir: str = "benchmarks/results"

    def __post_init__(self) -> None:
        self.modes = tuple(dict.fromkeys(self.modes))
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"--modes must be a non-empty subset of {','.join(MODES)}; unknown: {unknown}")
        if self.skip_prag:
            self.modes = tuple(m for m in self.modes if m not in PRAG_MODES)
            if not self.modes:
                raise ValueError("--skip-prag left no mode to run")
        for name in ("limit", "batch_size", "threads", "max_new_tokens", "prag_steps", "gpu_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("distractors", "prag_limit", "prag_max_closed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.conflict_limit < 0:
            raise ValueError(f"conflict_limit must be >= 0, got {self.conflict_limit}")
        if not 0 < self.hyco_rate <= 1:
            raise ValueError(f"hyco_rate must be in (0, 1], got {self.hyco_rate}")
        if self.prag_qa not in ("siblings", "none"):
            raise ValueError(f"prag_qa must be 'siblings' or 'none', got {self.prag_qa!r}")

    @property
    def settings(self) -> tuple[str, ...]:
        return ("gold", "distractors") if self.distractors > 0 else ("gold",)


# --------------------------------------------------------------------------- data


@dataclass
class Item:
    """One benchmark question: its gold paragraph, distractors and (for PRAG) sibling QA."""

    id: str
    question: str
    answers: list[str]
    gold: str
    gold_id: str
    ordered: list[tuple[str, str]]  # (passage id, text) of the distractor setting, gold included
    article: str

    def documents(self, setting: str) -> list[tuple[str, str]]:
        return [(self.gold_id, self.gold)] if setting == "gold" else list(self.ordered)


def load_items(config: BenchmarkConfig, count: int | None = None) -> tuple[list[Item], dict[str, list[tuple[str, list[str]]]], list[Item]]:
    """The selected questions, every dev paragraph's (question, answers), and all dev items.

    Selection: all dev questions shuffled with ``seed``, at most one per paragraph (so a
    paragraph's LoRA is trained once and the set spans many articles), first ``count``
    (default ``limit``).  A longer selection starts with the same questions.
    """
    count = config.limit if count is None else count
    from hyco_rag.data import load_squad

    examples = load_squad(num_distractors=config.distractors, seed=config.seed)
    paragraph_qa: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    items: list[Item] = []
    for example in examples:
        gold = example.passages[example.gold[0]]
        paragraph_qa[gold.id].append((example.question, list(example.answers)))
        items.append(
            Item(
                id=example.id,
                question=example.question,
                answers=list(example.answers),
                gold=gold.text,
                gold_id=gold.id,
                ordered=[(p.id, p.text) for p in example.passages],
                article=gold.id.split("-")[0],
            )
        )
    order = list(range(len(items)))
    random.Random(config.seed).shuffle(order)
    seen: set[str] = set()
    chosen: list[Item] = []
    for index in order:
        item = items[index]
        if item.gold_id in seen:
            continue
        seen.add(item.gold_id)
        chosen.append(item)
        if len(chosen) >= count:
            break
    return chosen, dict(paragraph_qa), items


def _overlaps(a: str, b: str) -> bool:
    from hyco_rag.metrics import normalize_answer

    x, y = normalize_answer(a), normalize_answer(b)
    return bool(x) and bool(y) and (f" {x} " in f" {y} " or f" {y} " in f" {x} ")


def sibling_qa(
    passage_id: str, item: Item, paragraph_qa: dict[str, list[tuple[str, list[str]]]], limit: int
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """PRAG's per-passage QA augmentation, from the paragraph's *other* SQuAD questions.

    PRAG has the LLM write QA pairs about the passage; a 135M model cannot write usable ones,
    so the human-written questions of the same paragraph stand in.  The test question and
    every sibling whose answer overlaps the test answer are removed: nothing the LoRA is
    trained on states the answer being tested.
    """
    out = []
    for question, answers in paragraph_qa.get(passage_id, []):
        if question == item.question or not answers:
            continue
        if any(_overlaps(a, g) for a in answers for g in item.answers):
            continue
        out.append((question, tuple(dict.fromkeys(answers))))
        if len(out) >= limit:
            break
    return tuple(out)


# --------------------------------------------------------------------------- conflict probe

_MONTHS = {
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
}
#: Kinds the conflict probe swaps: entities, not free-text phrases.
ENTITY_KINDS = ("year", "date", "number", "person", "place", "name")
_NUMBER_WORDS = {
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "dozen", "hundred", "thousand", "million", "billion", "half",
}


def _first_wh(question: str) -> str:
    """The first question word (``What Doctor Who episode ...`` asks *what*, not *who*)."""
    match = re.search(r"\b(what|which|who|whom|whose|where|when|how|why)\b", question.lower())
    return match.group(1) if match else "other"


def answer_type(question: str, answer: str) -> str:
    """A coarse entity kind, so a swapped-in answer is plausible for the question."""
    from hyco_rag.metrics import normalize_answer

    norm = normalize_answer(answer)
    words = norm.split()
    if not words:
        return "empty"
    if re.fullmatch(r"(1[0-9]|20)\d\ds?", norm):
        return "year"
    if any(w in _MONTHS for w in words):
        return "date"
    q = question.lower()
    if re.match(r"^[$£€]?\d", answer.strip()) or words[0] in _NUMBER_WORDS:
        return "date" if re.search(r"\bwhen\b", q) else "number"
    capitalised = all(w[:1].isupper() for w in answer.split() if w[:1].isalpha() and w.lower() not in {"of", "the", "and", "de", "for"})
    wh = _first_wh(q)
    if capitalised and any(ch.isalpha() for ch in answer) and not any(ch.isdigit() for ch in answer):
        if wh in ("who", "whom", "whose"):
            return "person"
        if wh == "where":
            return "place"
        return "name"
    return f"other:{wh}"


_NOT_FOCUS = {
    "is", "was", "are", "were", "does", "did", "do", "has", "had", "have", "can", "could", "would",
    "will", "should", "may", "might", "of", "the", "a", "an", "name", "term", "two", "three",
}


def question_focus(question: str) -> str:
    """The word that says what is asked for: ``What nationality was Tesla?`` -> ``nationality``.

    ``how many``/``how much``/``how long``... keep both words; ``what kind of X`` gives ``X``;
    empty when the question names no kind (``What is ...``).
    """
    words = re.findall(r"[a-z]+", question.lower())
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        if word in ("what", "which", "whose") and following:
            if following in ("kind", "type", "sort", "form") and i + 3 < len(words) and words[i + 2] == "of":
                return words[i + 3]
            return "" if following in _NOT_FOCUS else following
        if word == "how" and following:
            return f"how {following}"
    return ""


def replace_answer(passage: str, answers: Sequence[str], substitute: str) -> str:
    """Every occurrence of any answer variant (longest first, whole words) -> ``substitute``."""
    variants = sorted({a.strip() for a in answers if a.strip()}, key=len, reverse=True)
    if not variants:
        return passage
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(v)}(?!\w)" for v in variants))
    return pattern.sub(substitute, passage)


@dataclass
class ConflictCase:
    item: Item
    swapped: str
    substitute: str
    kind: str


def build_conflicts(items: Sequence[Item], pool: Sequence[Item], limit: int, seed: int) -> list[ConflictCase]:
    """Swap each item's answer in its gold paragraph for another question's answer of its kind.

    Only entity answers (:data:`ENTITY_KINDS`) are swapped.
    The substitute comes from another article, answers a question with the same focus word when
    one exists (``What nationality ...``), else has the same number of words; it overlaps no
    gold answer and is absent from the paragraph, and after the swap no gold answer may remain
    in the paragraph.  Items without such a swap are left out.
    """
    from hyco_rag.metrics import answer_in_text, normalize_answer

    entries: list[tuple[str, str, str, str, int]] = []  # answer, article, kind, focus, words
    for other in pool:
        answer = other.answers[0].strip()
        if answer and len(answer) <= 60:
            entries.append(
                (answer, other.article, answer_type(other.question, answer), question_focus(other.question),
                 len(normalize_answer(answer).split()))
            )
    entries.sort()
    by_kind: dict[str, list[tuple[str, str, str, str, int]]] = defaultdict(list)
    for entry in entries:
        by_kind[entry[2]].append(entry)
    cases: list[ConflictCase] = []
    for item in items:
        if len(cases) >= limit:
            break
        kind = answer_type(item.question, item.answers[0])
        if kind not in ENTITY_KINDS:
            continue
        focus = question_focus(item.question)
        length = len(normalize_answer(item.answers[0]).split())
        rng = random.Random(seed * 7919 + zlib.crc32(item.id.encode()))
        usable = [
            e for e in by_kind.get(kind, [])
            if e[1] != item.article
            and not any(_overlaps(e[0], g) for g in item.answers)
            and not answer_in_text(item.gold, [e[0]])
        ]
        # Most plausible first: same kind and question focus, then same kind and length.
        tiers = [
            [e for e in usable if focus and e[3] == focus and abs(e[4] - length) <= 1],
            [e for e in usable if e[4] == length],
            [e for e in usable if abs(e[4] - length) <= 1],
        ]
        candidates = next((t for t in tiers if t), [])
        if not candidates:
            continue
        substitute = rng.choice(sorted({e[0] for e in candidates}))
        swapped = replace_answer(item.gold, item.answers, substitute)
        if swapped == item.gold or answer_in_text(swapped, item.answers) or not answer_in_text(swapped, [substitute]):
            continue
        cases.append(ConflictCase(item, swapped, substitute, kind))
    return cases


# --------------------------------------------------------------------------- runners


@dataclass
class ModeRun:
    """Predictions and costs of one mode on one list of questions."""

    predictions: list[str]
    wall_s: float  # generation call(s), encode/translate/compress included
    prompt_tokens: list[int]
    context_tokens: list[int]
    encode_s: float = 0.0
    translate_s: float = 0.0
    compress_s: float = 0.0
    generate_s: float = 0.0
    prag_train_s: list[float] = field(default_factory=list)  # per question
    passages: int = 0
    delta_bytes: list[int] = field(default_factory=list)  # per passage (PRAG)
    delta_ranks: list[int] = field(default_factory=list)


def run_runtime(
    runtime: Any,
    questions: Sequence[str],
    documents: Sequence[Sequence[str]],
    mode: str,
    generation: Any,
    deltas: Sequence[Any] | None = None,
    desc: str = "",
) -> ModeRun:
    """``runtime.answer_batch`` over batches of similar prompt length, results in input order."""
    from tqdm.auto import tqdm

    n = len(questions)
    order = sorted(range(n), key=lambda i: (sum(len(d) for d in documents[i]), len(questions[i])))
    predictions: list[str] = [""] * n
    prompt_tokens = [0] * n
    context_tokens = [0] * n
    run = ModeRun(predictions, 0.0, prompt_tokens, context_tokens)
    step = generation.batch_size
    for start in tqdm(range(0, n, step), desc=desc or mode, unit="batch", leave=False, disable=n <= step):
        index = order[start : start + step]
        begin = time.perf_counter()
        answers = runtime.answer_batch(
            [questions[i] for i in index],
            [list(documents[i]) for i in index],
            mode=mode,
            deltas=[deltas[i] for i in index] if deltas is not None else None,
            config=generation,
        )
        run.wall_s += time.perf_counter() - begin
        for i, answer in zip(index, answers):
            predictions[i] = answer.text
            prompt_tokens[i] = answer.prompt_tokens
            context_tokens[i] = answer.context_tokens
            run.encode_s += answer.timings.get("encode", 0.0)
            run.translate_s += answer.timings.get("translate", 0.0)
            run.compress_s += answer.timings.get("compress", 0.0)
            run.generate_s += answer.timings.get("generate", 0.0)
            run.delta_ranks.append(answer.delta_rank)
    return run


class PragTrainer:
    """PRAG at query time: each question's passages get their own LoRA, trained together.

    The passages of one question are trained as one group by the stage-1 trainer
    (:func:`hyco_rag.dyprag.training.prag.train_group_loras`), which equals independent runs
    per passage (per-slot Adam); the per-passage time is the group's time over its size.
    """

    def __init__(self, model: Any, tokenizer: Any, config: BenchmarkConfig, paragraph_qa: dict[str, list[tuple[str, list[str]]]]) -> None:
        from hyco_rag.dyprag.injection import DeltaInjector
        from hyco_rag.dyprag.training.prag import PragConfig

        kinds = ("passage", "closed", "context") if config.prag_qa == "siblings" else ("passage",)
        self.prag_config = PragConfig(
            steps=config.prag_steps, max_closed=config.prag_max_closed, kinds=kinds, measure=False,
            group_size=max(1, config.distractors + 1), seed=config.seed,
        )
        self.model, self.tokenizer = model, tokenizer
        self.config = config
        self.paragraph_qa = paragraph_qa
        self.injector = DeltaInjector(model, self.prag_config.delta_config)

    def train(self, item: Item, documents: Sequence[tuple[str, str]]) -> tuple[list[Any], float]:
        """One LoRADelta per passage and the wall seconds it took."""
        from hyco_rag.dyprag.delta import LoRADelta
        from hyco_rag.dyprag.training.data import TrainingPassage
        from hyco_rag.dyprag.training.prag import train_group_loras

        passages = [
            TrainingPassage(
                id=f"{item.id}:{pid}",
                text=text,
                qa=sibling_qa(pid, item, self.paragraph_qa, self.config.prag_max_closed) if self.config.prag_qa == "siblings" else (),
            )
            for pid, text in documents
        ]
        begin = time.perf_counter()
        factors, _ = train_group_loras(self.model, self.tokenizer, passages, self.prag_config, injector=self.injector)
        seconds = time.perf_counter() - begin
        deltas = [
            LoRADelta({name: (a[g].clone(), b[g].clone()) for name, (a, b) in factors.items()}, self.prag_config.scaling)
            for g in range(len(passages))
        ]
        return deltas, seconds


def derangement(items: Sequence[Item]) -> list[int]:
    """For each question, the next one in the list from another article (controls' deltas)."""
    n = len(items)
    if n < 2:
        raise ValueError("a shuffled control needs at least 2 questions")
    out = []
    for i, item in enumerate(items):
        k = next((k for k in range(1, n) if items[(i + k) % n].article != item.article), 1)
        out.append((i + k) % n)
    return out


def run_shuffled(
    runtime: Any, items: Sequence[Item], texts: Sequence[Sequence[str]], mode: str, generation: Any, desc: str
) -> ModeRun:
    """A control mode: each question answered under the deltas of another question's passages."""
    begin = time.perf_counter()
    deltas = [runtime.deltas_for(texts[j]) for j in derangement(items)]
    seconds = time.perf_counter() - begin
    run = run_runtime(runtime, [i.question for i in items], texts, _RUNTIME_MODE[mode], generation, deltas, desc)
    run.wall_s += seconds
    run.passages = sum(len(t) for t in texts)
    return run


def run_prag(
    runtime: Any,
    trainer: PragTrainer,
    items: Sequence[Item],
    documents: Sequence[Sequence[tuple[str, str]]],
    modes: Sequence[str],
    generation: Any,
    desc: str,
) -> dict[str, ModeRun]:
    """Train every question's LoRAs, then generate ``prag`` / ``prag_combine`` with them."""
    from tqdm.auto import tqdm

    from hyco_rag.dyprag.delta import LoRADelta

    deltas, train_s, delta_bytes = [], [], []
    for item, docs in tqdm(list(zip(items, documents)), desc=f"PRAG LoRAs {desc}", unit="question"):
        per_passage, seconds = trainer.train(item, docs)
        deltas.append(LoRADelta.combine(per_passage, "sum"))  # PRAG: add_weighted_adapter(cat) = sum
        train_s.append(seconds)
        delta_bytes.extend(d.nbytes for d in per_passage)
    runs = {}
    texts = [[text for _, text in docs] for docs in documents]
    for mode in modes:
        run = run_runtime(runtime, [i.question for i in items], texts, _RUNTIME_MODE[mode], generation, deltas, f"{mode} {desc}")
        run.prag_train_s = list(train_s)
        run.passages = sum(len(d) for d in documents)
        run.delta_bytes = list(delta_bytes)
        runs[mode] = run
    return runs


# --------------------------------------------------------------------------- scoring


def _mean(values: Sequence[float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


def _share(value: float | None, oracle: float | None) -> float | None:
    if value is None or oracle is None or oracle <= 0:
        return None
    return 100.0 * value / oracle


def qa_row(
    setting: str,
    mode: str,
    run: ModeRun,
    items: Sequence[Item],
    oracle: dict[str, tuple[float, float]] | None,
    sub_ids: set[str],
    *,
    passage_bytes: float,
    passage_tokens: float,
    translator_bytes: int,
    embedding_bytes: int = 0,
) -> dict[str, Any]:
    """Scores and costs of one (setting, mode); oracle = per-question (EM, F1) of rag/gold."""
    from hyco_rag.metrics import best_exact_match, best_f1

    em = [best_exact_match(p, i.answers) for p, i in zip(run.predictions, items)]
    f1 = [best_f1(p, i.answers) for p, i in zip(run.predictions, items)]
    n = len(items)
    sub = [k for k, i in enumerate(items) if i.id in sub_ids]
    row: dict[str, Any] = {
        "section": "qa",
        "setting": setting,
        "mode": mode,
        "n": n,
        "em": 100 * _mean(em),
        "f1": 100 * _mean(f1),
    }
    if oracle is not None:
        row["em_vs_oracle"] = _share(_mean(em), _mean([oracle[i.id][0] for i in items]))
        row["f1_vs_oracle"] = _share(_mean(f1), _mean([oracle[i.id][1] for i in items]))
    row["n_sub"] = len(sub)
    if sub:
        row["em_sub"] = 100 * _mean([em[k] for k in sub])
        row["f1_sub"] = 100 * _mean([f1[k] for k in sub])
        if oracle is not None:
            row["f1_sub_vs_oracle"] = _share(_mean([f1[k] for k in sub]), _mean([oracle[items[k].id][1] for k in sub]))
    row["context_tokens"] = _mean(run.context_tokens)
    row["prompt_tokens"] = _mean(run.prompt_tokens)
    row["passage_tokens"] = passage_tokens
    prag_train = sum(run.prag_train_s)
    row["s_per_q"] = (run.wall_s + prag_train) / n
    row["s_per_q_generate"] = run.generate_s / n
    # What a serving system pays when passage embeddings were computed at indexing time.
    row["s_per_q_pre_encoded"] = (run.wall_s - run.encode_s) / n if run.encode_s else None
    passages = run.passages or 0
    if mode in TRANSLATOR_MODES and passages and run.encode_s:
        row["encode_ms_per_passage"] = 1000 * run.encode_s / passages
        row["translate_ms_per_passage"] = 1000 * run.translate_s / passages
        row["translator_ms_per_passage"] = 1000 * (run.encode_s + run.translate_s) / passages
    if run.compress_s:
        row["compress_s_per_q"] = run.compress_s / n
    if mode in PRAG_MODES and passages:
        row["prag_train_s_per_passage"] = prag_train / passages
        row["prag_train_s_per_q"] = prag_train / n
    # Storage beyond the passage text itself.
    if mode in PRAG_MODES:
        row["extra_bytes_per_passage"] = _mean(run.delta_bytes)
    else:
        row["extra_bytes_per_passage"] = 0
    row["passage_text_bytes"] = passage_bytes
    if mode in TRANSLATOR_MODES:
        row["shared_translator_bytes"] = translator_bytes
        # Only if embeddings are computed at indexing time (the s_per_q_pre_encoded column).
        row["embedding_bytes_if_cached"] = embedding_bytes
    row["delta_rank"] = _mean(run.delta_ranks) if run.delta_ranks else 0
    row["predictions"] = [{"id": i.id, "prediction": p, "answers": i.answers} for p, i in zip(run.predictions, items)]
    return row


def conflict_row(mode: str, run: ModeRun, cases: Sequence[ConflictCase]) -> dict[str, Any]:
    """How often the answer follows the swapped passage vs the model's original answer."""
    from hyco_rag.metrics import answer_in_text, best_f1

    passage = [answer_in_text(p, [c.substitute]) for p, c in zip(run.predictions, cases)]
    original = [answer_in_text(p, c.item.answers) for p, c in zip(run.predictions, cases)]
    n = len(cases)
    return {
        "section": "conflict",
        "setting": "gold-swapped",
        "mode": mode,
        "n": n,
        "follows_passage": 100 * sum(passage) / n,
        "follows_original": 100 * sum(original) / n,
        "neither": 100 * sum(not a and not b for a, b in zip(passage, original)) / n,
        "f1_vs_swapped": 100 * _mean([best_f1(p, [c.substitute]) for p, c in zip(run.predictions, cases)]),
        "s_per_q": (run.wall_s + sum(run.prag_train_s)) / n,
        "predictions": [
            {"id": c.item.id, "prediction": p, "original": c.item.answers, "swapped_in": c.substitute, "kind": c.kind}
            for p, c in zip(run.predictions, cases)
        ],
    }


# --------------------------------------------------------------------------- GPU section


def _timed(fn: Any, device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` (device-synchronised)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(reps):
        begin = time.perf_counter()
        fn()
        sync()
        samples.append(1000 * (time.perf_counter() - begin))
    return float(statistics.median(samples))


def gpu_section(
    device: str = "cuda",
    *,
    hidden: int = 4096,
    intermediate: int = 14336,
    translator_layers: int = 32,
    model_layers: int = 2,
    heads: int = 32,
    kv_heads: int = 8,
    vocab: int = 128256,
    batch: int = 8,
    prefill_tokens: int = 512,
    decode_tokens: int = 32,
    passages_per_request: int = 3,
    passage_counts: Sequence[int] = (1, 3, 8, 32),
    dtype: torch.dtype = torch.bfloat16,
    reps: int = 20,
) -> list[dict[str, Any]]:
    """Translator and hooked-forward timings for a Llama-3-8B-shaped model with random weights.

    The translator covers every one of ``translator_layers`` layers' gate/up/down (its cost
    grows with the layer count); the decoder has only ``model_layers`` layers to fit memory,
    and its deltas are the translator's for those layers.  Runs on any device, so the logic is
    testable on CPU with small shapes.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyco_rag.dyprag.config import DeltaConfig
    from hyco_rag.dyprag.delta import LoRADelta
    from hyco_rag.dyprag.injection import DeltaInjector
    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig

    dev = torch.device(device)
    shape = f"hidden {hidden}, MLP {intermediate}"
    targets: dict[str, list[int]] = {}
    for layer in range(translator_layers):
        prefix = f"model.layers.{layer}.mlp."
        targets[prefix + "gate_proj"] = [hidden, intermediate]
        targets[prefix + "up_proj"] = [hidden, intermediate]
        targets[prefix + "down_proj"] = [intermediate, hidden]
    translator = ParameterTranslator(TranslatorConfig(input_dim=hidden, targets=targets, rank=2, hidden_dim=32)).to(dev).eval()
    rows: list[dict[str, Any]] = []
    generator = torch.Generator(device="cpu").manual_seed(0)
    translator_params = translator.num_parameters()
    for count in passage_counts:
        embeddings = torch.randn(count, hidden, generator=generator).to(dev)
        ms = _timed(lambda: translator.translate(embeddings), dev, reps)
        rows.append(
            {
                "section": "gpu",
                "measure": f"translate {count} passage(s), {translator_layers} layers x 3 targets",
                "shape": shape,
                "ms": ms,
                "ms_per_passage": ms / count,
                "target_ms": GPU_TARGET_MS,
                "meets_target": ms / count <= GPU_TARGET_MS,
                "translator_params": translator_params,
                "device": str(dev),
            }
        )

    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=model_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=max(8192, prefill_tokens + decode_tokens + 8),
    )
    with dev:
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config.pad_token_id = 0
    injector = DeltaInjector(model, DeltaConfig())
    names = set(injector.targets)
    request_deltas = []
    with torch.no_grad():
        for _ in range(batch):
            embeddings = torch.randn(passages_per_request, hidden, generator=generator).to(dev)
            per_passage = translator.translate(embeddings)
            combined = LoRADelta.combine(per_passage, "mean")
            request_deltas.append(
                LoRADelta({k: v for k, v in combined.factors.items() if k in names}, combined.scaling).to(dev, dtype)
            )
    ids = torch.randint(1, vocab, (batch, prefill_tokens), generator=generator).to(dev)
    mask = torch.ones_like(ids)

    def prefill() -> None:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    def prefill_hooked() -> None:
        with injector.apply(request_deltas):
            prefill()

    def decode() -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=ids[:, :16], attention_mask=mask[:, :16], max_new_tokens=decode_tokens,
                min_new_tokens=decode_tokens, do_sample=False,
            )

    def decode_hooked() -> None:
        with injector.apply(request_deltas):
            decode()

    layer_shape = f"{shape}, {model_layers} layers, batch {batch}"
    base = _timed(prefill, dev, max(3, reps // 4))
    hooked = _timed(prefill_hooked, dev, max(3, reps // 4))
    rows.append(
        {
            "section": "gpu",
            "measure": f"prefill forward, {prefill_tokens} tokens/row, per-row rank-{2 * passages_per_request} deltas",
            "shape": layer_shape,
            "ms": base,
            "ms_hooked": hooked,
            "overhead_pct": 100 * (hooked - base) / base,
            "device": str(dev),
        }
    )
    base = _timed(decode, dev, max(3, reps // 4), warmup=1)
    hooked = _timed(decode_hooked, dev, max(3, reps // 4), warmup=1)
    rows.append(
        {
            "section": "gpu",
            "measure": f"generate {decode_tokens} tokens (16-token prompt), per-row deltas; ms per token",
            "shape": layer_shape,
            "ms": base / decode_tokens,
            "ms_hooked": hooked / decode_tokens,
            "overhead_pct": 100 * (hooked - base) / base,
            "device": str(dev),
        }
    )
    return rows  # the random model is freed with this frame


def run_gpu_section(config: BenchmarkConfig, device: str | None = None, **shape: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The GPU section's rows and whether it ran (``{"run": False, "reason": ...}`` if not).

    ``device=None`` means CUDA when available.  The smoke test passes ``device="cpu"`` and toy
    ``shape`` (keyword arguments of :func:`gpu_section`) so this path runs without a GPU.
    """
    if not config.gpu:
        return [], {"run": False, "reason": "--no-gpu"}
    if device is None:
        if not torch.cuda.is_available():
            return [], {"run": False, "reason": "CUDA is not available on this machine"}
        device = "cuda"
    rows = gpu_section(device, model_layers=config.gpu_layers, reps=5 if config.quick else 20, **shape)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = device
    return rows, {"run": True, "device": name, "model_layers": config.gpu_layers}


# --------------------------------------------------------------------------- main


def _load_average() -> list[float] | None:
    """1/5/15-minute load averages: on a shared machine, timings are only comparable within a run."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


class ReaderBudgetCompressor:
    """HyCo at a fixed kept share, counted in the *reader's* tokens (what the prompt pays)."""

    def __init__(self, compressor: Any, rate: float, tokenizer: Any) -> None:
        self.compressor, self.rate, self.tokenizer = compressor, rate, tokenizer

    def compress(self, query: str, documents: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        return self.compressor.compress(query, list(documents), rate=self.rate, target_tokenizer=self.tokenizer)


def _sha256(path: Path) -> str | None:
    import hashlib

    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_hyco() -> tuple[Any, str | None]:
    """The HyCo compressor with its shipped weights, or ``(None, why not)``."""
    try:
        from hyco_rag.compression import HyCoCompressor  # type: ignore[attr-defined]
    except ImportError as error:
        return None, f"hyco_rag.compression.HyCoCompressor is not importable ({error})"
    try:
        return HyCoCompressor.from_pretrained(), None
    except Exception as error:  # noqa: BLE001 - any failure to load means "no shipped compressor"; the reason is reported
        return None, f"HyCoCompressor.from_pretrained() failed: {type(error).__name__}: {error}"


def parse_args(argv: Sequence[str] | None = None) -> BenchmarkConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="questions for the cheap modes (default 100; --quick 4)")
    parser.add_argument("--distractors", type=int, default=3, help="same-article distractors in the second setting (0: gold only)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--prag-limit", type=int, default=None, help="questions PRAG runs on (first of the selection; default 20; --quick 1)")
    parser.add_argument("--skip-prag", action="store_true", help="drop prag and prag_combine")
    parser.add_argument("--conflict-limit", type=int, default=None, help="questions of the conflict probe (default 50; --quick 3; 0: none)")
    parser.add_argument("--prag-qa", choices=("siblings", "none"), default="siblings",
                        help="PRAG augmentation: the paragraph's other SQuAD questions, or the passage-LM loss only")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer tokens (default 16; --quick 8)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--translator", default=None, help="translator folder (default: the shipped one)")
    parser.add_argument("--model", default=None, help="reader (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a minutes-long end-to-end check")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU section even when CUDA is available")
    parser.add_argument("--gpu-layers", type=int, default=2, help="decoder layers of the random Llama-3-8B-shaped model")
    parser.add_argument("--hyco-rate", type=float, default=0.25, help="combine_hyco: kept share of the passages' reader tokens")
    parser.add_argument("--results-dir", default="benchmarks/results")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    quick = args.quick
    try:
        return BenchmarkConfig(
            limit=args.limit if args.limit is not None else (4 if quick else 100),
            distractors=args.distractors,
            modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
            prag_limit=args.prag_limit if args.prag_limit is not None else (1 if quick else 20),
            skip_prag=args.skip_prag,
            conflict_limit=args.conflict_limit if args.conflict_limit is not None else (3 if quick else 50),
            prag_qa=args.prag_qa,
            prag_steps=1 if quick else 3,
            prag_max_closed=2 if quick else 6,
            max_new_tokens=args.max_new_tokens if args.max_new_tokens is not None else (8 if quick else 16),
            batch_size=args.batch_size,
            seed=args.seed,
            threads=args.threads,
            translator=args.translator,
            model=args.model,
            quick=quick,
            gpu=not args.no_gpu,
            gpu_layers=args.gpu_layers,
            hyco_rate=args.hyco_rate,
            results_dir=args.results_dir,
        )
    except ValueError as error:  # bad option values: a usage error, not a traceback
        parser.error(str(error))


def run(config: BenchmarkConfig, argv: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any], Path]:
    """The whole benchmark; returns (rows, recorded config, JSON path).  ``argv`` is recorded."""
    from hyco_rag.dyprag.encoding import PassageEncoder
    from hyco_rag.dyprag.runtime import ParametricRAG
    from hyco_rag.dyprag.translator import DEFAULT_TRANSLATOR_DIR, ParameterTranslator
    from hyco_rag.generation import ChatGenerator, GenerationConfig
    from hyco_rag.prompts import count_tokens
    from hyco_rag.results import write_results

    torch.set_num_threads(config.threads)
    load_before = _load_average()
    notes: list[str] = []
    modes = list(config.modes)
    started = time.perf_counter()

    # The conflict probe needs entity answers (about half of the questions): select further.
    selection, paragraph_qa, pool = load_items(config, max(config.limit, 4 * config.conflict_limit))
    items = selection[: config.limit]
    logger.info("%d questions selected from %d SQuAD v1.1 dev questions", len(items), len(pool))
    generator = ChatGenerator.from_pretrained(config.model, device="cpu")
    model, tokenizer = generator.model, generator.tokenizer
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, stop_at_newline=True)

    translator = None
    translator_bytes = 0
    if any(m in TRANSLATOR_MODES for m in modes):
        where = config.translator or str(DEFAULT_TRANSLATOR_DIR)
        try:
            translator = ParameterTranslator.from_pretrained(config.translator, model=model)
        except FileNotFoundError as error:
            raise SystemExit(
                f"modes {[m for m in modes if m in TRANSLATOR_MODES]} need a translator, and there is none at {where} "
                f"({error}). Pass --translator DIR, or run only --modes none,rag,prag,prag_combine."
            ) from error
        translator_bytes = sum(p.numel() * p.element_size() for p in translator.parameters())
    # No embedding cache: every mode pays its own passage encoding, as a query-time system would.
    encoder = PassageEncoder(model, tokenizer, cache_size=0)
    runtime = ParametricRAG(generator, translator, encoder=encoder)
    hyco_runtime = None
    compressor_sha = None
    if "combine_hyco" in modes:
        compressor, why = load_hyco()
        if compressor is None:
            notes.append(f"combine_hyco skipped: {why}")
            logger.warning("combine_hyco skipped: %s", why)
            modes.remove("combine_hyco")
        else:
            hyco_runtime = ParametricRAG(
                generator, translator, encoder=encoder, compressor=ReaderBudgetCompressor(compressor, config.hyco_rate, tokenizer)
            )
            import hyco_rag

            # from_pretrained() with no path loads the shipped weights: record which ones.
            compressor_sha = _sha256(Path(hyco_rag.__file__).parent / "resources" / "compressor" / "model.safetensors")
    trainer = PragTrainer(model, tokenizer, config, paragraph_qa) if any(m in PRAG_MODES for m in modes) else None
    prag_items = items[: config.prag_limit] if trainer else []
    sub_ids = {i.id for i in prag_items}
    if trainer:
        notes.append(
            f"PRAG runs on the first {len(prag_items)} of the {len(items)} selected questions "
            f"(the '*_sub' columns score every mode on those)"
        )

    def runtime_for(mode: str) -> Any:
        return hyco_runtime if mode == "combine_hyco" else runtime

    rows: list[dict[str, Any]] = []
    oracle: dict[str, tuple[float, float]] | None = None
    from hyco_rag.metrics import best_exact_match, best_f1

    for setting in config.settings:
        docs = [item.documents(setting) for item in items]
        texts = [[t for _, t in d] for d in docs]
        n_passages = sum(len(d) for d in docs)
        passage_tokens = _mean([sum(count_tokens(tokenizer, t) for t in ts) / len(ts) for ts in texts])
        passage_bytes = _mean([sum(len(t.encode("utf-8")) for t in ts) / len(ts) for ts in texts])
        ordered = [m for m in ("rag",) if m in modes] + [m for m in modes if m not in ("rag", "none") and m not in PRAG_MODES]
        runs: dict[str, ModeRun] = {}
        for mode in ordered:
            # Controls run where the question is "does the passage matter": gold setting and
            # conflict probe (the distractor setting would double their CPU cost).
            if mode in SHUFFLED_MODES and (len(items) < 2 or setting != "gold"):
                continue
            logger.info("%s / %s on %d questions", setting, mode, len(items))
            if mode in SHUFFLED_MODES:
                run_ = run_shuffled(runtime, items, texts, mode, generation, f"{mode} {setting}")
            else:
                run_ = run_runtime(runtime_for(mode), [i.question for i in items], texts, _RUNTIME_MODE[mode], generation, desc=f"{mode} {setting}")
            run_.passages = n_passages
            runs[mode] = run_
            if setting == "gold" and mode == "rag":
                oracle = {
                    i.id: (best_exact_match(p, i.answers), best_f1(p, i.answers)) for p, i in zip(run_.predictions, items)
                }
        prag_modes = [m for m in modes if m in PRAG_MODES]
        if prag_modes and prag_items:
            runs.update(run_prag(runtime, trainer, prag_items, docs[: len(prag_items)], prag_modes, generation, setting))
        for mode in [m for m in modes if m != "none"]:
            if mode not in runs:
                continue
            mode_items = prag_items if mode in PRAG_MODES else items
            rows.append(
                qa_row(setting, mode, runs[mode], mode_items, oracle, sub_ids, passage_bytes=passage_bytes,
                       passage_tokens=passage_tokens, translator_bytes=translator_bytes,
                       embedding_bytes=4 * int(model.config.hidden_size))
            )
        if setting == "gold" and "none" in modes:
            run_ = run_runtime(runtime, [i.question for i in items], [[] for _ in items], "none", generation, desc="none")
            rows.insert(0, qa_row("closed-book", "none", run_, items, oracle, sub_ids, passage_bytes=0.0,
                                  passage_tokens=0.0, translator_bytes=0))

    # Knowledge-conflict probe on the gold paragraph with its answer swapped.
    cases = build_conflicts(selection, pool, config.conflict_limit, config.seed) if config.conflict_limit else []
    prag_cases: list[ConflictCase] = []
    if cases:
        kinds: dict[str, int] = defaultdict(int)
        for case in cases:
            kinds[case.kind] += 1
        notes.append(
            f"conflict probe: {len(cases)} entity-answer questions from the same seeded selection "
            f"(first {len(items)} are the QA questions); kinds {dict(sorted(kinds.items()))}"
        )
        questions = [c.item.question for c in cases]
        swapped_docs = [[c.swapped] for c in cases]
        for mode in [m for m in modes if m not in PRAG_MODES]:
            documents = [[] for _ in cases] if mode == "none" else swapped_docs
            if mode in SHUFFLED_MODES:
                if len(cases) < 2:
                    continue
                run_ = run_shuffled(runtime, [c.item for c in cases], documents, mode, generation, f"{mode} conflict")
            else:
                run_ = run_runtime(runtime_for(mode), questions, documents, _RUNTIME_MODE[mode], generation, desc=f"{mode} conflict")
            rows.append(conflict_row(mode, run_, cases))
        prag_modes = [m for m in modes if m in PRAG_MODES]
        prag_cases = cases[: config.prag_limit] if prag_modes else []
        if prag_cases:
            notes.append(f"conflict probe: PRAG on the first {len(prag_cases)} cases")
            runs = run_prag(
                runtime, trainer, [c.item for c in prag_cases],
                [[(c.item.gold_id, c.swapped)] for c in prag_cases], prag_modes, generation, "conflict",
            )
            for mode in prag_modes:
                rows.append(conflict_row(mode, runs[mode], prag_cases))
    else:
        notes.append("conflict probe: no question allowed an answer swap")

    gpu_rows, gpu_status = run_gpu_section(config)
    rows.extend(gpu_rows)
    if not gpu_status["run"]:
        note = f"GPU section not run: {gpu_status['reason']}"
        print(note)
        notes.append(note)

    recorded = asdict(config)
    recorded.update(
        reader=config.model or "embedded SmolLM2-135M-Instruct",
        translator_dir=str(config.translator or DEFAULT_TRANSLATOR_DIR) if translator is not None else None,
        translator_params=translator.num_parameters() if translator is not None else None,
        translator_bytes=translator_bytes,
        translator_sha256=_sha256(Path(config.translator or DEFAULT_TRANSLATOR_DIR) / "model.safetensors") if translator is not None else None,
        compressor_sha256=compressor_sha,
        translator_combine=runtime.delta_config.combine,
        prag_config=asdict(trainer.prag_config) if trainer else None,
        generation=asdict(generation),
        questions=len(items),
        prag_questions=len(prag_items),
        conflict_questions=len(cases),
        prag_conflict_questions=len(prag_cases),
        gpu_section=gpu_status,
        notes=notes,
        seconds=time.perf_counter() - started,
        load_average_before=load_before,
        load_average_after=_load_average(),
        command="python benchmarks/parametric_qa.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    path = write_results("parametric_qa", rows, config=recorded, results_dir=config.results_dir)
    return rows, recorded, path


def report(rows: list[dict[str, Any]], recorded: dict[str, Any], *, markdown: bool = False) -> str:
    """The QA, conflict and GPU tables and the notes, as terminal text or markdown."""
    from hyco_rag.results import format_table

    def fmt(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else "" if value is None else str(value)

    def table(section: str, columns: list[str]) -> list[str]:
        chosen = [r for r in rows if r.get("section") == section]
        if not chosen:
            return []
        present = [c for c in columns if any(r.get(c) is not None for r in chosen)]
        if not markdown:
            return [format_table(chosen, present), ""]
        lines = ["| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
        lines += ["| " + " | ".join(fmt(r.get(c)) for c in present) + " |" for r in chosen]
        return [*lines, ""]

    lines = [
        f"SQuAD v1.1 dev, {recorded['questions']} questions; PRAG on {recorded['prag_questions']}; "
        "'vs_oracle' = % of standard RAG with the gold passage on the same questions",
        "",
        *table("qa", QA_COLUMNS),
        f"Knowledge conflict: answer swapped in the gold passage ({recorded['conflict_questions']} questions); % of answers",
        "",
        *table("conflict", CONFLICT_COLUMNS),
        *table("gpu", GPU_COLUMNS),
    ]
    lines += [f"{'- ' if markdown else ''}note: {note}" for note in recorded["notes"]]
    if markdown:
        lines = [f"# parametric_qa\n\n`{recorded['command']}`\n", *lines]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> Path:
    from hyco_rag.results import write_text_atomic

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = parse_args(argv)
    rows, recorded, path = run(config, argv)
    table = write_text_atomic(path.with_suffix(".md"), report(rows, recorded, markdown=True))
    print()
    print(report(rows, recorded))
    print("results:", path, table)
    return path


if __name__ == "__main__":
    main()
