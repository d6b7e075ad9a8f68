"""QA evaluation of context compression: methods x rates, scored by a small reader LLM.

For each question the reader (SmolLM2 by default, greedy, short answers) sees the context a
method produced, in the same prompt template (:mod:`hyco_rag.prompts`), so score differences
come from the context alone. Reported per (dataset, method, rate):

- ``answer_recall``: share of questions whose gold answer string survives in the context
  (among those whose answer appears in the full context at all);
- ``em`` / ``f1``: reader scores (SQuAD normalisation), and both as a share of the gold-only
  oracle's (``f1_vs_oracle``), because a small reader is weak even with perfect context;
- ``tokens_in`` / ``tokens_out``: context tokens per question, counted with the reader's
  tokenizer, and ``kept_share`` = sum out / sum in;
- seconds per question (compression + generation) and compressor throughput (reader tokens of
  input context per second of compression).

Every method gets the same budget, ``floor(rate * tokens_in)`` reader tokens per question.
Rate-free rows (no context, full context, oracle) are computed once, not per rate. Generations
are cached on disk by prompt (with the seconds they took), so re-running after adding a method
only generates what is new.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyco_rag.evaluation.budget import TokenCounter, check_rate, token_budget
from hyco_rag.metrics import answer_in_text, best_exact_match, best_f1
from hyco_rag.prompts import TEMPLATES

if TYPE_CHECKING:
    from hyco_rag.data import QAExample
    from hyco_rag.generation import ChatGenerator

logger = logging.getLogger(__name__)

RATE_FREE_METHODS = ("none", "full", "oracle")
COMPRESSION_METHODS = ("hyco", "hyco_multihop", "random", "embeddings_filter", "sentence_selection", "llmlingua")
ALL_METHODS = RATE_FREE_METHODS + COMPRESSION_METHODS
GENERALITY_METHODS = ("none", "full", "oracle", "hyco", "hyco_multihop", "sentence_selection")
#: Scoring passes of each HyCo method (``hyco_multihop``: one evidence-chain hop after the first pass).
HYCO_HOPS = {"hyco": 1, "hyco_multihop": 2}
MAIN_DATASET = "squad"
#: SQuAD v1.1 dev with retrieved distractors (NQ-style, :mod:`hyco_rag.data.distractors`).
SIMILAR_DATASET = "squad_similar"
#: The sets of the main table: every method, the main rates and limits, passages without titles.
MAIN_DATASETS = (MAIN_DATASET, SIMILAR_DATASET)
GENERALITY_DATASETS = ("hotpotqa", "musique", "2wikimultihopqa")
DATASETS = (*MAIN_DATASETS, *GENERALITY_DATASETS)
DEFAULT_RATES = (1 / 2, 1 / 4, 1 / 8, 1 / 10)
METHOD_LABELS = {
    "none": "no context",
    "full": "full context",
    "oracle": "gold-only oracle",
    "hyco": "HyCo (ours)",
    "hyco_multihop": "HyCo, 2-hop evidence chain (ours)",
    "random": "random word drop",
    "embeddings_filter": "EmbeddingsFilter (MiniLM)",
    "sentence_selection": "sentence selection (MiniLM)",
    "llmlingua": "LongLLMLingua (SmolLM2)",
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("HYCO_RAG_CACHE", "~/.cache/hyco_rag")).expanduser() / "eval"


def parse_rates(text: str) -> tuple[float, ...]:
    """``"1/2,1/4,0.125"`` -> (0.5, 0.25, 0.125); each must be in (0, 1]."""
    rates = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        try:
            value = float(Fraction(piece))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"cannot read rate {piece!r}; write e.g. 1/8 or 0.125") from None
        rates.append(check_rate(value))
    if not rates:
        raise ValueError(f"no rates in {text!r}")
    return tuple(rates)


def rate_label(rate: float | None) -> str:
    if rate is None:
        return "-"
    fraction = Fraction(rate).limit_denominator(1000)
    return f"{fraction.numerator}/{fraction.denominator}" if fraction.denominator != 1 else str(fraction.numerator)


def _parse_list(text: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(piece.strip() for piece in text.split(",") if piece.strip()))
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    if not items:
        raise ValueError(f"no {what} given")
    return items


@dataclass
class EvalConfig:
    """Everything a QA-compression run depends on; recorded in the results JSON."""

    datasets: tuple[str, ...] = (MAIN_DATASET,)
    limit: int = 200  # SQuAD questions
    generality_limit: int = 50  # questions per multi-hop set
    rates: tuple[float, ...] = DEFAULT_RATES
    generality_rates: tuple[float, ...] = (1 / 4, 1 / 8)
    methods: tuple[str, ...] = ALL_METHODS
    generality_methods: tuple[str, ...] = GENERALITY_METHODS
    num_distractors: int = 9
    seed: int = 0
    max_new_tokens: int = 16
    batch_size: int = 8
    threads: int = 2
    prompt: str = "short"  # the reader prompt, a name in hyco_rag.prompts.TEMPLATES
    reader: str | None = None  # default: the embedded SmolLM2
    compressor: str | None = None  # HyCoCompressor.from_pretrained path; None = shipped weights
    titles_for_multihop: bool = True
    cache_dir: str | None = field(default_factory=lambda: str(default_cache_dir()))
    llmlingua_python: str | None = None
    llmlingua_model: str | None = None
    llmlingua_limit: int | None = None  # LongLLMLingua on the first N questions only (it is slow)
    reader_limit: int | None = None  # reader EM/F1 on the first N SQuAD questions (None: all)
    generality_reader_limit: int | None = None  # the same for each multi-hop set

    def __post_init__(self) -> None:
        self.datasets = _parse_list(",".join(self.datasets), DATASETS, "dataset")
        self.methods = _parse_list(",".join(self.methods), ALL_METHODS, "method")
        self.generality_methods = _parse_list(",".join(self.generality_methods), ALL_METHODS, "method")
        self.rates = tuple(check_rate(r) for r in self.rates)
        self.generality_rates = tuple(check_rate(r) for r in self.generality_rates)
        for name in ("limit", "generality_limit", "max_new_tokens", "batch_size", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("llmlingua_limit", "reader_limit", "generality_reader_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.num_distractors < 0:
            raise ValueError(f"num_distractors must be >= 0, got {self.num_distractors}")
        if self.prompt not in TEMPLATES:
            raise ValueError(f"unknown prompt {self.prompt!r}; choose from {', '.join(TEMPLATES)}")

    def methods_for(self, dataset: str) -> tuple[str, ...]:
        if dataset in MAIN_DATASETS:
            return self.methods
        return tuple(m for m in self.methods if m in self.generality_methods)

    def rates_for(self, dataset: str) -> tuple[float, ...]:
        return self.rates if dataset in MAIN_DATASETS else self.generality_rates

    def limit_for(self, dataset: str) -> int:
        return self.limit if dataset in MAIN_DATASETS else self.generality_limit

    def reader_limit_for(self, dataset: str) -> int:
        value = self.reader_limit if dataset in MAIN_DATASETS else self.generality_reader_limit
        return min(value or self.limit_for(dataset), self.limit_for(dataset))


# --------------------------------------------------------------------------------------------
# Data


def sample_examples(examples: list[QAExample], limit: int, seed: int) -> list[QAExample]:
    """A seeded random sample; nested across limits (the first 50 of 100 are the sample of 50),
    so runs of different sizes share their questions and their cached generations."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order[:limit]]


def load_examples(dataset: str, limit: int, *, seed: int = 0, num_distractors: int = 9) -> list[QAExample]:
    """Questions of ``dataset`` with their passages.

    ``squad``: SQuAD v1.1 dev, gold + same-article distractors. ``squad_similar``: the same
    questions (the same seeded sample) with the ``num_distractors`` paragraphs of other articles
    that MiniLM ranks highest for the question and that lack the answer
    (:func:`similar_distractor_examples`). Multi-hop sets are their *held-out* splits only
    (:data:`hyco_rag.compression.training.data.SPLITS`), the rows the shipped compressor never
    trained on.
    """
    from hyco_rag import data
    from hyco_rag.compression.training.data import SPLITS, load_split

    if dataset == MAIN_DATASET:
        examples = data.load_squad(num_distractors=num_distractors, seed=seed)
    elif dataset == SIMILAR_DATASET:
        gold_only = [e for e in data.load_squad(num_distractors=0) if e.answers and e.gold and e.passages]
        return similar_distractor_examples(gold_only, sample_examples(gold_only, limit, seed), num_distractors, seed)
    elif dataset in SPLITS:
        examples = load_split(dataset, "heldout")
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    examples = [e for e in examples if e.answers and e.gold and e.passages]
    return sample_examples(examples, limit, seed)


def similar_distractor_examples(
    corpus_examples: Sequence[QAExample], examples: Sequence[QAExample], num_distractors: int, seed: int
) -> list[QAExample]:
    """``examples`` (gold paragraph only) with distractors retrieved by the embedded MiniLM from
    every gold paragraph of ``corpus_examples``; the corpus embeddings are cached on disk."""
    from hyco_rag.data.distractors import with_retrieved_distractors
    from hyco_rag.retrieval import DenseIndex

    corpus = list({p.id: p for e in corpus_examples for p in e.passages}.values())
    index = DenseIndex.from_pretrained(device="cpu")
    index.add(corpus, progress=len(corpus) > 500, cache=True)
    return with_retrieved_distractors(examples, index, num_distractors=num_distractors, seed=seed)


def document_texts(example: QAExample, with_titles: bool) -> list[str]:
    """Passage strings given to compressors and the reader. Multi-hop titles name the bridge
    entity, so they are kept there ("Title: text"); SQuAD passages share one article title."""
    if with_titles:
        return [f"{p.title}: {p.text}" if p.title else p.text for p in example.passages]
    return [p.text for p in example.passages]


# --------------------------------------------------------------------------------------------
# Generation with an on-disk cache


class JsonlCache:
    """A content-keyed record cache in JSONL files: read all ``<stem>*.jsonl``, append to this
    process's own file (so concurrent runs never interleave lines)."""

    def __init__(self, directory: Path | None, stem: str) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.path: Path | None = None
        if directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{stem}.{socket.gethostname()}-{os.getpid()}.jsonl"
        for path in sorted(directory.glob(f"{stem}*.jsonl")):
            with open(path, encoding="utf-8") as stream:
                for line in stream:
                    if line.strip():
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError:  # a torn last line from an interrupted run
                            continue
                        self.records[record["key"]] = record

    @staticmethod
    def key(*parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False, default=str).encode("utf-8")).hexdigest()

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.records[key]

    def put(self, key: str, record: dict[str, Any]) -> None:
        self.put_many([(key, record)])

    def put_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Add records and append them to this process's file in one write (one flush per batch)."""
        lines = []
        for key, record in items:
            record = {"key": key, **record}
            self.records[key] = record
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        if self.path is not None and lines:
            with open(self.path, "a", encoding="utf-8") as stream:
                stream.writelines(lines)


class CachedReader:
    """Batched greedy generation with a JSONL cache keyed by (reader, decoding, prompt).

    Prompts are sorted by length before batching (less left padding); each row is charged its
    batch's seconds divided by the batch size, and that number is cached with the text so a
    cache hit still reports the time the generation took.
    """

    def __init__(self, generator: ChatGenerator, reader_id: str, cache_dir: Path | None) -> None:
        self.generator = generator
        self.reader_id = reader_id
        self.cache = JsonlCache(cache_dir, f"generations-{reader_id}")

    def _key(self, prompt: str) -> str:
        config = self.generator.config
        payload = f"{self.reader_id}\0{config.max_new_tokens}\0{config.do_sample}\0{config.stop_at_newline}\0{prompt}"
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def generate(self, prompts: Sequence[str], desc: str = "generate") -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        keys = [self._key(p) for p in prompts]
        todo = sorted({k: p for k, p in zip(keys, prompts) if k not in self.cache}.items(), key=lambda kv: len(kv[1]))
        if todo:
            tokenizer = self.generator.tokenizer
            lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for _, p in todo]
            order = sorted(range(len(todo)), key=lambda i: lengths[i])
            batch_size = self.generator.config.batch_size
            with tqdm(total=len(todo), desc=desc, unit="q", leave=False) as bar:
                for start in range(0, len(order), batch_size):
                    batch = [todo[i] for i in order[start : start + batch_size]]
                    tick = time.perf_counter()
                    outputs = self.generator.generate_prompts([p for _, p in batch])
                    seconds = (time.perf_counter() - tick) / len(batch)
                    self.cache.put_many(
                        (
                            key,
                            {
                                "text": output.text,
                                "prompt_tokens": output.prompt_tokens,
                                "completion_tokens": output.completion_tokens,
                                "seconds": seconds,
                            },
                        )
                        for (key, _), output in zip(batch, outputs)
                    )
                    bar.update(len(batch))
        return [self.cache[k] for k in keys]


# --------------------------------------------------------------------------------------------
# Methods


@dataclass
class MethodRun:
    """What one method produced for every question at one rate."""

    documents: list[list[str]]
    seconds: list[float]  # compression seconds per question (0 for rate-free methods)
    budgets: list[int | None]
    batched_seconds: float | None = None  # all questions in one batched call (HyCo only)


class HyCoMethod:
    """Our compressor, called per question with the same reader-token budget as the others;
    ``hops`` > 1 follows evidence chains (:mod:`hyco_rag.compression.chain`)."""

    def __init__(self, path: str | None, tokenizer: Any) -> None:
        from hyco_rag.compression import HyCoCompressor

        self.compressor = HyCoCompressor.from_pretrained(path) if path else HyCoCompressor()
        self.tokenizer = tokenizer

    def compress(self, query: str, documents: Sequence[str], budget: int, hops: int = 1) -> list[str]:
        result = self.compressor.compress(
            query, list(documents), target_tokens=budget, target_tokenizer=self.tokenizer, hops=hops
        )
        return list(result.texts)

    def batched_seconds(self, queries: Sequence[str], documents: Sequence[Sequence[str]], rate: float, hops: int = 1) -> float:
        """Wall time of one ``compress_batch`` over all questions (the throughput a server sees)."""
        tick = time.perf_counter()
        self.compressor.compress_batch(
            list(queries), [list(d) for d in documents], rate=rate, target_tokenizer=self.tokenizer, hops=hops
        )
        return time.perf_counter() - tick


def _timed(function: Callable[[], Any]) -> tuple[Any, float]:
    tick = time.perf_counter()
    value = function()
    return value, time.perf_counter() - tick


@dataclass
class DatasetItems:
    name: str
    examples: list[QAExample]
    documents: list[list[str]]
    tokens_in: list[int]
    answer_in_full: list[bool]


class QAEvaluation:
    """Runs :class:`EvalConfig`; build once, then :meth:`run` returns result rows."""

    def __init__(self, config: EvalConfig) -> None:
        self.config = config
        self._generator: ChatGenerator | None = None
        self._reader: CachedReader | None = None
        self._encoder = None
        self._baselines: dict[str, Any] = {}
        self._hyco: HyCoMethod | None = None
        self.notes: dict[str, Any] = {}
        self._compressions: JsonlCache | None = None

    @property
    def compressions(self) -> JsonlCache:
        """Baseline outputs (with the seconds they took), so re-runs skip MiniLM work."""
        if self._compressions is None:
            self._compressions = JsonlCache(Path(self.config.cache_dir) if self.config.cache_dir else None, "baselines")
        return self._compressions

    # -- lazily built parts ------------------------------------------------------------------
    @property
    def generator(self) -> ChatGenerator:
        if self._generator is None:
            from hyco_rag.generation import ChatGenerator, GenerationConfig

            config = GenerationConfig(
                max_new_tokens=self.config.max_new_tokens, batch_size=self.config.batch_size, stop_at_newline=True
            )
            self._generator = ChatGenerator.from_pretrained(
                self.config.reader, config=config, device="cpu", template=TEMPLATES[self.config.prompt]
            )
        return self._generator

    @property
    def reader(self) -> CachedReader:
        if self._reader is None:
            from hyco_rag.models import resolve_causal_lm

            reader_id = Path(resolve_causal_lm(self.config.reader)).name
            cache = Path(self.config.cache_dir) if self.config.cache_dir else None
            self._reader = CachedReader(self.generator, reader_id, cache)
        return self._reader

    @property
    def counter(self) -> TokenCounter:
        return TokenCounter(self.generator.tokenizer)

    def baseline(self, name: str) -> Any:
        from hyco_rag.evaluation import baselines

        if name not in self._baselines:
            if name in ("embeddings_filter", "sentence_selection") and self._encoder is None:
                from hyco_rag.models import load_sentence_encoder

                self._encoder = load_sentence_encoder(device="cpu")
            if name == "random":
                self._baselines[name] = baselines.RandomWordDrop(self.counter, seed=self.config.seed)
            elif name == "embeddings_filter":
                method = baselines.EmbeddingsFilterBaseline(self.counter, self._encoder)
                self.notes["embeddings_filter_implementation"] = method.implementation
                self._baselines[name] = method
            elif name == "sentence_selection":
                self._baselines[name] = baselines.SentenceSelection(self.counter, self._encoder)
            else:
                raise ValueError(f"{name!r} is not a baseline")
        return self._baselines[name]

    @property
    def hyco(self) -> HyCoMethod:
        if self._hyco is None:
            self._hyco = HyCoMethod(self.config.compressor, self.generator.tokenizer)
        return self._hyco

    # -- running -------------------------------------------------------------------------------
    def items(self, dataset: str) -> DatasetItems:
        examples = load_examples(
            dataset, self.config.limit_for(dataset), seed=self.config.seed, num_distractors=self.config.num_distractors
        )
        with_titles = self.config.titles_for_multihop and dataset not in MAIN_DATASETS
        documents = [document_texts(e, with_titles) for e in examples]
        tokens_in = [self.counter.total(d) for d in documents]
        answer_in_full = [answer_in_text("\n".join(d), e.answers) for e, d in zip(examples, documents)]
        return DatasetItems(dataset, examples, documents, tokens_in, answer_in_full)

    def _rate_free(self, items: DatasetItems, method: str) -> MethodRun:
        n = len(items.examples)
        documents: list[list[str]]
        if method == "none":
            documents = [[] for _ in range(n)]
        elif method == "full":
            documents = [list(d) for d in items.documents]
        elif method == "oracle":
            documents = [[d[i] for i in e.gold] for e, d in zip(items.examples, items.documents)]
        else:
            raise ValueError(method)
        return MethodRun(documents, [0.0] * n, [None] * n)

    def _baseline_runs(self, items: DatasetItems, method: str, rates: Sequence[float]) -> dict[float, MethodRun]:
        from tqdm.auto import tqdm

        compressor = self.baseline(method)
        settings = [method, getattr(compressor, "implementation", ""), getattr(compressor, "seed", None)]
        runs = {rate: MethodRun([], [], []) for rate in rates}
        for example, documents, tokens_in in tqdm(
            list(zip(items.examples, items.documents, items.tokens_in)), desc=f"{items.name}/{method}", leave=False
        ):
            budgets = [token_budget(tokens_in, rate) for rate in rates]
            keys = [self.compressions.key(settings, example.question, documents, budget) for budget in budgets]
            if not all(key in self.compressions for key in keys):
                prepared, prepare_seconds = _timed(lambda: compressor.prepare(example.question, documents))  # noqa: B023 (called here)
                for key, budget in zip(keys, budgets):
                    output, select_seconds = _timed(lambda: compressor.select(prepared, budget))  # noqa: B023 (called here)
                    # each rate alone would redo prepare, so each is charged for it
                    self.compressions.put(key, {"documents": output, "seconds": prepare_seconds + select_seconds})
            for rate, key, budget in zip(rates, keys, budgets):
                record = self.compressions[key]
                runs[rate].documents.append(record["documents"])
                runs[rate].seconds.append(record["seconds"])
                runs[rate].budgets.append(budget)
        return runs

    def _hyco_runs(self, items: DatasetItems, rates: Sequence[float], method: str = "hyco") -> dict[float, MethodRun]:
        from tqdm.auto import tqdm

        hyco, hops = self.hyco, HYCO_HOPS[method]
        runs = {rate: MethodRun([], [], []) for rate in rates}
        for rate in rates:
            for example, documents, tokens_in in tqdm(
                list(zip(items.examples, items.documents, items.tokens_in)),
                desc=f"{items.name}/{method}@{rate_label(rate)}",
                leave=False,
            ):
                budget = token_budget(tokens_in, rate)
                output, seconds = _timed(lambda: hyco.compress(example.question, documents, budget, hops))  # noqa: B023 (called here)
                runs[rate].documents.append(output)
                runs[rate].seconds.append(seconds)
                runs[rate].budgets.append(budget)
        # Throughput with batching across questions, measured once per dataset (it hardly
        # depends on the rate): at 1/8 when swept, else the smallest rate.
        rate = min(rates, key=lambda r: abs(r - 1 / 8))
        batched = hyco.batched_seconds([e.question for e in items.examples], items.documents, rate, hops)
        for run in runs.values():
            run.batched_seconds = batched
        return runs

    def _llmlingua_runs(self, items: DatasetItems, rates: Sequence[float]) -> dict[float, MethodRun]:
        from hyco_rag.evaluation.llmlingua import LLMLinguaPeer, LLMLinguaPeerConfig

        # Rows of this method cover items.examples, which the caller may have cut to
        # llmlingua_limit questions (the first of the nested sample).

        cache = str(Path(self.config.cache_dir) / f"llmlingua-outputs-{items.name}.jsonl") if self.config.cache_dir else None
        peer = LLMLinguaPeer(
            LLMLinguaPeerConfig(
                python=self.config.llmlingua_python,
                model=self.config.llmlingua_model,
                threads=self.config.threads,
                cache_path=cache,
            )
        )
        # Grouped by question so the runner reuses its budget-independent ranking across rates.
        requests, slots = [], []
        for index, (example, documents, tokens_in) in enumerate(zip(items.examples, items.documents, items.tokens_in)):
            for rate in rates:
                requests.append((example.question, documents, token_budget(tokens_in, rate)))
                slots.append((rate, index))
        outputs = peer.compress_many(requests)
        runs = {
            rate: MethodRun([None] * len(items.examples), [0.0] * len(items.examples), [None] * len(items.examples))  # type: ignore[list-item]  # filled below
            for rate in rates
        }
        for (rate, index), (_, _, budget), output in zip(slots, requests, outputs):
            runs[rate].documents[index] = output.documents
            runs[rate].seconds[index] = output.seconds
            runs[rate].budgets[index] = budget
        return runs

    def _score(self, items: DatasetItems, method: str, rate: float | None, run: MethodRun) -> dict[str, Any]:
        """Compression metrics over every question; reader metrics over the first
        ``reader_limit`` (generation dominates the cost on CPU)."""
        examples = items.examples
        n = len(examples)
        k = min(n, self.config.reader_limit_for(items.name))
        prompts = [self.generator.prompt(e.question, docs) for e, docs in zip(examples[:k], run.documents[:k])]
        generations = self.reader.generate(prompts, desc=f"{items.name}/{method}@{rate_label(rate)}")
        predictions = [g["text"] for g in generations]
        tokens_out = [self.counter.total(docs) for docs in run.documents]
        recall_base = [i for i in range(n) if items.answer_in_full[i]]
        recall = [answer_in_text("\n".join(run.documents[i]), examples[i].answers) for i in recall_base]
        em = [best_exact_match(p, e.answers) for p, e in zip(predictions, examples)]
        f1 = [best_f1(p, e.answers) for p, e in zip(predictions, examples)]
        over = [i for i, b in enumerate(run.budgets) if b is not None and tokens_out[i] > b]
        compress_s = sum(run.seconds)
        generate_s = sum(g["seconds"] for g in generations)
        return {
            "dataset": items.name,
            "method": method,
            "label": METHOD_LABELS[method],
            "rate": rate,
            "rate_label": rate_label(rate),
            "n": n,
            "reader_n": k,
            "answer_recall": 100 * sum(recall) / len(recall) if recall else None,
            "recall_n": len(recall_base),
            "em": 100 * sum(em) / k,
            "f1": 100 * sum(f1) / k,
            "tokens_in": sum(items.tokens_in) / n,
            "tokens_out": sum(tokens_out) / n,
            "kept_share": sum(tokens_out) / max(1, sum(items.tokens_in)),
            "prompt_tokens": sum(g["prompt_tokens"] for g in generations) / k,
            "over_budget": len(over),
            "compress_s_per_q": compress_s / n,
            "generate_s_per_q": generate_s / k,
            "s_per_q": compress_s / n + generate_s / k,
            "throughput_tok_s": (sum(items.tokens_in) / compress_s) if rate is not None and compress_s > 0 else None,
            "throughput_batched_tok_s": sum(items.tokens_in) / run.batched_seconds if run.batched_seconds else None,
            "predictions": [{"id": e.id, "prediction": p, "f1": 100 * s} for e, p, s in zip(examples, predictions, f1)],
        }

    def run_dataset(self, dataset: str) -> list[dict[str, Any]]:
        items = self.items(dataset)
        methods = self.config.methods_for(dataset)
        rates = self.config.rates_for(dataset)
        logger.info(
            "%s: %d questions, %.0f context tokens each on average",
            dataset,
            len(items.examples),
            sum(items.tokens_in) / max(1, len(items.examples)),
        )
        rows = []
        for method in methods:
            if method in RATE_FREE_METHODS:
                rows.append(self._score(items, method, None, self._rate_free(items, method)))
                continue
            if method in HYCO_HOPS:
                runs = self._hyco_runs(items, rates, method)
            elif method == "llmlingua":
                subset = items
                if self.config.llmlingua_limit is not None and self.config.llmlingua_limit < len(items.examples):
                    k = self.config.llmlingua_limit
                    subset = DatasetItems(
                        items.name, items.examples[:k], items.documents[:k], items.tokens_in[:k], items.answer_in_full[:k]
                    )
                runs = self._llmlingua_runs(subset, rates)
                for rate in rates:
                    rows.append(self._score(subset, method, rate, runs[rate]))
                continue
            else:
                runs = self._baseline_runs(items, method, rates)
            for rate in rates:
                rows.append(self._score(items, method, rate, runs[rate]))
        oracle = next((r for r in rows if r["method"] == "oracle"), None)
        for row in rows:
            base = None
            if oracle is not None:
                base = subset_mean(oracle, [p["id"] for p in row["predictions"]])
            row["f1_vs_oracle"] = 100 * row["f1"] / base if base else None
        return rows

    def run(self) -> list[dict[str, Any]]:
        import torch

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.config.threads)
        try:
            if any(m in HYCO_HOPS for d in self.config.datasets for m in self.config.methods_for(d)):
                _ = self.hyco  # fail fast (e.g. missing weights) before hours of other methods
            rows: list[dict[str, Any]] = []
            for dataset in self.config.datasets:
                rows.extend(self.run_dataset(dataset))
            return rows
        finally:  # the caller's thread count (a test suite, a notebook) is not ours to keep
            torch.set_num_threads(previous_threads)


# --------------------------------------------------------------------------------------------
# Reporting and the command line


def subset_mean(row: dict[str, Any], ids: Sequence[str], metric: str = "f1") -> float | None:
    """``row``'s mean per-question ``metric`` over the questions ``ids`` (to compare a method run
    on fewer questions, e.g. LongLLMLingua, with the others on exactly those questions)."""
    by_id = {p["id"]: p[metric] for p in row.get("predictions", [])}
    values = [by_id[i] for i in ids if i in by_id]
    if len(values) != len(ids) or not values:
        return None
    return sum(values) / len(values)


TABLE_COLUMNS = [
    "dataset",
    "label",
    "rate_label",
    "n",
    "reader_n",
    "kept_share",
    "tokens_in",
    "tokens_out",
    "answer_recall",
    "em",
    "f1",
    "f1_vs_oracle",
    "s_per_q",
    "throughput_tok_s",
    "batched_tok_s",
]


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the terminal: rounded, without per-question predictions."""
    out = []
    for row in rows:
        short = {key: row.get(key) for key in TABLE_COLUMNS}
        short["batched_tok_s"] = row.get("throughput_batched_tok_s")
        for key in ("throughput_tok_s", "batched_tok_s"):
            value = short.get(key)
            if value is not None:
                short[key] = int(round(value))
        out.append(short)
    return out


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table (for docs/benchmarks.md)."""
    columns = [
        "dataset",
        "method",
        "rate",
        "n",
        "reader_n",
        "kept share",
        "tokens in",
        "tokens out",
        "answer recall %",
        "EM",
        "F1",
        "F1 % of oracle",
        "s/question",
        "tok/s",
        "tok/s batched",
    ]

    def fmt(value: Any, digits: int = 1) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [
            row["dataset"],
            row["label"],
            row["rate_label"],
            fmt(row["n"]),
            fmt(row.get("reader_n")),
            fmt(row["kept_share"], 3),
            fmt(row["tokens_in"], 0),
            fmt(row["tokens_out"], 0),
            fmt(row["answer_recall"]),
            fmt(row["em"]),
            fmt(row["f1"]),
            fmt(row.get("f1_vs_oracle"), 0),
            fmt(row["s_per_q"], 2),
            fmt(row.get("throughput_tok_s"), 0),
            fmt(row.get("throughput_batched_tok_s"), 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _find_row(rows: Sequence[dict[str, Any]], dataset: str, method: str, at: float | None) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in rows
            if r["dataset"] == dataset
            and r["method"] == method
            and (r["rate"] is None if at is None else r["rate"] is not None and math.isclose(r["rate"], at))
        ),
        None,
    )


def targets(rows: Sequence[dict[str, Any]], rate: float = 1 / 8) -> dict[str, Any]:
    """The issue's targets at 8x fewer tokens on SQuAD, checked against this run's rows."""

    def find(method: str, at: float | None) -> dict[str, Any] | None:
        return _find_row(rows, MAIN_DATASET, method, at)

    ours, full = find("hyco", rate), find("full", None)
    llmlingua, efilter = find("llmlingua", rate), find("embeddings_filter", rate)
    result: dict[str, Any] = {"rate": rate_label(rate)}
    if ours is None:
        return {**result, "note": "no HyCo row at this rate"}
    result["answer_recall>=90"] = {"value": ours["answer_recall"], "met": (ours["answer_recall"] or 0) >= 90}
    if full:
        result["f1>=full_context"] = {"value": ours["f1"], "full": full["f1"], "met": ours["f1"] >= full["f1"]}
    for name, peer in (("llmlingua", llmlingua), ("embeddings_filter", efilter)):
        if not peer:
            continue
        value, n = ours["f1"], ours.get("reader_n")
        if peer.get("reader_n") is not None and n is not None and peer["reader_n"] < n:  # peer ran on the first questions only
            value = subset_mean(ours, [p["id"] for p in peer["predictions"]])
            n = peer["reader_n"]
        if value is not None:
            result[f"f1>={name}+5"] = {"value": value, name: peer["f1"], "questions": n, "met": value >= peer["f1"] + 5}
    best = max((v for v in (ours.get("throughput_tok_s"), ours.get("throughput_batched_tok_s")) if v is not None), default=None)
    if best is not None:
        result["throughput>=10k_tok_s_cpu"] = {
            "value": best,
            "per_question": ours.get("throughput_tok_s"),
            "batched": ours.get("throughput_batched_tok_s"),
            "met": best >= 10_000,
        }
    return result


def compressor_targets(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The compressor's round-two targets, for the sets and rows this run has.

    * every multi-hop family: answer kept at 1/8 >= 70% by HyCo (the better of ``hyco`` and
      ``hyco_multihop``) and >= 15 points above the best MiniLM baseline (sentence selection,
      EmbeddingsFilter);
    * ``squad_similar``: answer kept at 1/20 >= 85%;
    * ``squad`` and ``squad_similar``: reader F1 at 1/8 >= 90% of the gold-only oracle and above
      full context.
    """
    result: dict[str, Any] = {}
    datasets = dict.fromkeys(r["dataset"] for r in rows)
    for dataset in datasets:
        if dataset in GENERALITY_DATASETS:
            ours = [r for m in HYCO_HOPS if (r := _find_row(rows, dataset, m, 1 / 8)) is not None]
            peers = [r for m in ("sentence_selection", "embeddings_filter") if (r := _find_row(rows, dataset, m, 1 / 8))]
            if not ours:
                continue
            best = max(ours, key=lambda r: r["answer_recall"] or 0)
            entry: dict[str, Any] = {
                "method": best["method"],
                "value": best["answer_recall"],
                "met_70": (best["answer_recall"] or 0) >= 70,
            }
            if peers:
                peer = max(peers, key=lambda r: r["answer_recall"] or 0)
                entry.update(peer=peer["method"], peer_value=peer["answer_recall"])
                entry["met_plus_15"] = (best["answer_recall"] or 0) >= (peer["answer_recall"] or 0) + 15
            result[f"{dataset}: answer kept at 1/8 >= 70 and >= best MiniLM + 15"] = entry
        if dataset == SIMILAR_DATASET and (ours_20 := _find_row(rows, dataset, "hyco", 1 / 20)) is not None:
            value = ours_20["answer_recall"]
            result[f"{dataset}: answer kept at 1/20 >= 85"] = {"value": value, "met": (value or 0) >= 85}
        if dataset in MAIN_DATASETS and (ours_8 := _find_row(rows, dataset, "hyco", 1 / 8)) is not None:
            oracle, full = _find_row(rows, dataset, "oracle", None), _find_row(rows, dataset, "full", None)
            entry = {"value": ours_8["f1"], "oracle": oracle["f1"] if oracle else None, "full": full["f1"] if full else None}
            if oracle:
                entry["met_90_oracle"] = ours_8["f1"] >= 0.9 * oracle["f1"]
            if full:
                entry["met_above_full"] = ours_8["f1"] > full["f1"]
            result[f"{dataset}: reader F1 at 1/8 >= 90% of oracle and > full"] = entry
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``benchmarks/compression_qa.py`` and ``hyco-rag eval``."""
    defaults = EvalConfig.__dataclass_fields__
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma list of {', '.join(DATASETS)} (default: all; SQuAD is the main table, the others the generality section)",
    )
    parser.add_argument(
        "--limit", type=int, default=defaults["limit"].default, help="SQuAD questions (seeded random sample of v1.1 dev)"
    )
    parser.add_argument(
        "--generality-limit", type=int, default=defaults["generality_limit"].default, help="questions per multi-hop set"
    )
    parser.add_argument(
        "--reader-limit",
        type=int,
        default=None,
        help="reader EM/F1 on the first N SQuAD questions only (answer recall, tokens and speed use all); default: all",
    )
    parser.add_argument("--generality-reader-limit", type=int, default=None, help="the same for each multi-hop set")
    parser.add_argument("--rates", default="1/2,1/4,1/8,1/10", help="kept shares for SQuAD, e.g. 1/2,1/4,1/8,1/10")
    parser.add_argument("--generality-rates", default="1/4,1/8", help="kept shares for the multi-hop sets")
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma list of {', '.join(ALL_METHODS)}")
    parser.add_argument("--generality-methods", default=",".join(GENERALITY_METHODS), help="methods run on the multi-hop sets")
    parser.add_argument(
        "--skip-llmlingua",
        action="store_true",
        help="leave out the LongLLMLingua peer (slow; needs scripts/peers/setup_llmlingua.sh)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 8 SQuAD + 4 per multi-hop set, rates 1/4,1/8, no LongLLMLingua, 8 new tokens",
    )
    parser.add_argument("--num-distractors", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=defaults["max_new_tokens"].default)
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"].default)
    parser.add_argument(
        "--prompt",
        choices=tuple(TEMPLATES),
        default=defaults["prompt"].default,
        help="reader prompt: short = the two-shot short-answer prompt (hyco_rag.prompts.SHORT_ANSWER_TEMPLATE), plain = one instruction",
    )
    parser.add_argument(
        "--threads", type=int, default=defaults["threads"].default, help="torch CPU threads (reader, compressors, peer)"
    )
    parser.add_argument(
        "--reader", default=None, help="reader LLM (HF id, folder or GGUF); default: embedded SmolLM2-135M-Instruct"
    )
    parser.add_argument(
        "--compressor", default=None, help="HyCo weights folder (HyCoCompressor.from_pretrained); default: the shipped weights"
    )
    parser.add_argument("--no-titles", action="store_true", help="do not prefix multi-hop passages with their titles")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()), help="generation / LongLLMLingua cache folder")
    parser.add_argument("--no-cache", action="store_true", help="generate everything afresh")
    parser.add_argument("--llmlingua-python", default=None, help="python of the LongLLMLingua venv")
    parser.add_argument("--llmlingua-model", default=None, help="SmolLM2 folder prepared for transformers 4.44")
    parser.add_argument(
        "--llmlingua-limit",
        type=int,
        default=None,
        help="run LongLLMLingua on the first N SQuAD questions only (it takes ~1 min/question/rate on a loaded CPU); the targets compare on those",
    )
    parser.add_argument("--results-dir", default="benchmarks/results", help="where the JSON and PNG go")
    parser.add_argument("--name", default="compression_qa", help="results file stem")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print the table only")


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    methods = _parse_list(args.methods, ALL_METHODS, "method")
    if args.skip_llmlingua:
        methods = tuple(m for m in methods if m != "llmlingua")
    kwargs: dict[str, Any] = dict(
        datasets=_parse_list(args.datasets, DATASETS, "dataset"),
        limit=args.limit,
        generality_limit=args.generality_limit,
        rates=parse_rates(args.rates),
        generality_rates=parse_rates(args.generality_rates),
        methods=methods,
        generality_methods=_parse_list(args.generality_methods, ALL_METHODS, "method"),
        num_distractors=args.num_distractors,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        threads=args.threads,
        prompt=args.prompt,
        reader=args.reader,
        compressor=args.compressor,
        titles_for_multihop=not args.no_titles,
        cache_dir=None if args.no_cache else args.cache_dir,
        llmlingua_python=args.llmlingua_python,
        llmlingua_model=args.llmlingua_model,
        llmlingua_limit=args.llmlingua_limit,
        reader_limit=args.reader_limit,
        generality_reader_limit=args.generality_reader_limit,
    )
    if args.quick:
        kwargs.update(
            limit=min(args.limit, 8),
            generality_limit=min(args.generality_limit, 4),
            rates=(1 / 4, 1 / 8),
            generality_rates=(1 / 4, 1 / 8),
            max_new_tokens=8,
            methods=tuple(m for m in methods if m != "llmlingua"),
        )
    return EvalConfig(**kwargs)


def main(args: argparse.Namespace) -> int:
    """Run, print the table and targets, write JSON (+ PNG). Returns an exit code."""
    from hyco_rag.results import format_table, write_results, write_text_atomic

    config = config_from_args(args)
    evaluation = QAEvaluation(config)
    started = time.perf_counter()
    rows = evaluation.run()
    wall = time.perf_counter() - started
    print(format_table(summary_rows(rows), TABLE_COLUMNS))
    checked = targets(rows)
    print("\nTargets at 1/8 (SQuAD):")
    for key, value in checked.items():
        print(f"  {key}: {value}")
    round_two = compressor_targets(rows)
    print("\nCompressor targets:")
    for key, value in round_two.items():
        print(f"  {key}: {value}")
    if args.no_write:
        return 0
    record = {
        **asdict(config),
        "wall_seconds": wall,
        "targets": checked,
        "compressor_targets": round_two,
        **evaluation.notes,
    }
    record["rates"] = [rate_label(r) for r in config.rates]
    record["generality_rates"] = [rate_label(r) for r in config.generality_rates]
    path = write_results(args.name, rows, config=record, results_dir=args.results_dir)
    write_text_atomic(path.with_suffix(".md"), markdown_table(rows) + "\n")
    print(f"\nwrote {path} (+ .md table)")
    if not args.no_plot:
        from hyco_rag.evaluation.plot import plot_f1_vs_kept_share

        png = plot_f1_vs_kept_share(rows, path.with_suffix(".png"))
        print(f"wrote {png}")
    return 0
