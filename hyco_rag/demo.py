"""The main job: the same questions answered in several modes side by side, through one engine.

retrieve (MiniLM over the 346 bundled SQuAD paragraphs, embeddings cached on disk) -> per mode
(see :class:`hyco_rag.engine.Mode`): passages in the prompt (``rag``), HyCo-compressed
(``hyco``), DyPRAG deltas plus passages (``combine``), soft tokens plus compressed passages
(``hybrid``), ... -> generate (SmolLM2 with its chat template).  The modes' requests for one
question are submitted together, so the engine decodes them in one batch.  Every number is measured, nothing is canned.

``hyco-rag demo`` (:mod:`hyco_rag.cli.demo`) prints the result as one table; :func:`run_demo`
returns it as data (:class:`DemoRun`, ``to_dict()`` for JSON).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hyco_rag.engine.modes import MODE_NAMES, Mode

if TYPE_CHECKING:
    from hyco_rag.engine import Engine
    from hyco_rag.retrieval import DenseIndex

logger = logging.getLogger(__name__)

#: What ``hyco-rag demo`` compares when no ``--modes`` is given.
DEFAULT_MODES: tuple[Mode, ...] = (Mode.RAG, Mode.HYCO, Mode.COMBINE)


def parse_modes(value: str | Sequence[str | Mode]) -> tuple[Mode, ...]:
    """``"rag,hyco,combine"`` (or a list) as modes, in order, without repeats.

    Raises:
        ValueError: an empty list or a name that is not a mode (the message names the choices).
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [item.strip() if isinstance(item, str) else item for item in items]
    names = [name for name in names if name != ""]
    if not names:
        raise ValueError(f"--modes needs at least one mode; choose from {', '.join(MODE_NAMES)}")
    modes: list[Mode] = []
    for name in names:
        try:
            mode = Mode.parse(name)
        except ValueError:
            raise ValueError(f"unknown mode {name!r} in --modes; choose from {', '.join(MODE_NAMES)} (comma-separated)") from None
        if mode not in modes:
            modes.append(mode)
    return tuple(modes)


def default_threads() -> int:
    """Torch CPU threads for the demo: 1 on a machine with 2 cores or fewer, else min(physical cores, 4).

    Measured on a busy 2-core machine: torch's default (one thread per core) generated 3-6x
    slower than 1 thread, because the threads wait on each other and on other processes.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    if usable <= 2:
        return 1
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    return max(1, min(physical or usable, usable, 4))


@dataclass
class DemoConfig:
    """What the demo runs; the defaults are the embedded offline models.

    Attributes:
        llm / encoder / translator: reader, retrieval encoder and DyPRAG translator (default:
            the embedded SmolLM2, MiniLM and the translator shipped for SmolLM2).
        modes: compared side by side (see :func:`parse_modes`).
        k: passages retrieved per question.
        questions: how many of the bundled questions (default: all).
        max_new_tokens: answer length bound (answers also stop at a newline).
        rate: share of the passages' tokens HyCo keeps (the compressing modes; in ``hybrid`` and
            ``combine-hybrid`` the soft tokens count in it).
        threads: torch CPU threads to set (``None``: leave torch's setting alone).
        device: ``cpu`` / ``cuda`` (default: CUDA when available).
        index_cache: keep the passage embeddings on disk between runs.
        sequential: decode each mode's request alone, so the seconds compare the modes (by
            default a question's modes are decoded in one batch: faster in total, but each
            mode's seconds then include its batch-mates' work).
    """

    llm: str | None = None
    encoder: str | None = None
    translator: str | None = None
    modes: Sequence[str | Mode] | str = DEFAULT_MODES
    k: int = 3
    questions: int | None = None
    max_new_tokens: int = 24
    rate: float = 0.25
    threads: int | None = None
    device: str | None = None
    index_cache: bool = True
    sequential: bool = False

    def __post_init__(self) -> None:
        self.modes = parse_modes(self.modes)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.questions is not None and self.questions < 1:
            raise ValueError(f"questions must be >= 1, got {self.questions}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.rate <= 1:
            raise ValueError(f"rate must be in (0, 1], got {self.rate}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    @property
    def mode_list(self) -> tuple[Mode, ...]:
        return tuple(self.modes)  # type: ignore[arg-type]  # parsed in __post_init__


@dataclass
class ModeAnswer:
    """One question answered in one mode."""

    mode: str
    answer: str
    f1: float
    em: float
    context_tokens: int
    passage_tokens: int
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    prepare_seconds: float


@dataclass
class QuestionResult:
    """One question, what was retrieved for it, and its answer per mode."""

    question: str
    gold: list[str]
    retrieved_ids: list[str]
    retrieved_titles: list[str]
    gold_retrieved: bool
    answers: dict[str, ModeAnswer] = field(default_factory=dict)


@dataclass
class ModeSummary:
    mode: str
    questions: int
    mean_f1: float
    mean_em: float
    context_tokens: int
    passage_tokens: int
    seconds: float
    #: context tokens saved against ``rag`` in the same run (``None`` when rag did not run).
    saved_vs_rag: int | None


@dataclass
class DemoRun:
    """Everything one demo run measured."""

    config: DemoConfig
    modes: list[str]
    #: requested modes that could not run, with the reason.
    unavailable: dict[str, str]
    results: list[QuestionResult]
    #: seconds per start-up stage (``encoder``, ``index``, ``engine``, ``compressor``, ...).
    startup: dict[str, float]
    #: seconds from the start of :func:`run_demo` until everything is loaded and indexed.
    ready_s: float
    #: seconds from the start of :func:`run_demo` to the first answered question.
    first_answer_s: float | None
    total_s: float
    index_cache_hit: bool | None
    threads: int

    def summary(self) -> list[ModeSummary]:
        rag = None
        if Mode.RAG.value in self.modes:
            rag = sum(r.answers[Mode.RAG.value].context_tokens for r in self.results)
        out = []
        for mode in self.modes:
            answers = [r.answers[mode] for r in self.results]
            count = len(answers)
            tokens = sum(a.context_tokens for a in answers)
            out.append(
                ModeSummary(
                    mode=mode,
                    questions=count,
                    mean_f1=sum(a.f1 for a in answers) / count if count else 0.0,
                    mean_em=sum(a.em for a in answers) / count if count else 0.0,
                    context_tokens=tokens,
                    passage_tokens=sum(a.passage_tokens for a in answers),
                    seconds=sum(a.seconds for a in answers),
                    saved_vs_rag=rag - tokens if rag is not None else None,
                )
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (what ``--json`` writes)."""
        from dataclasses import asdict

        config = asdict(self.config)
        config["modes"] = [str(m) for m in self.config.mode_list]
        return {
            "config": config,
            "modes": list(self.modes),
            "unavailable": dict(self.unavailable),
            "threads": self.threads,
            "index_cache_hit": self.index_cache_hit,
            "startup_s": dict(self.startup),
            "ready_s": self.ready_s,
            "first_answer_s": self.first_answer_s,
            "total_s": self.total_s,
            "summary": [asdict(s) for s in self.summary()],
            "questions": [asdict(r) for r in self.results],
        }


Reporter = Callable[[str], None]


def load_engine(config: DemoConfig, report: Reporter | None = None) -> tuple[Engine, dict[str, float], str | None]:
    """The demo's one engine: the reader, plus the translator when a requested mode needs it.

    A translator that exists but cannot be loaded (e.g. saved in a newer format while it is
    being retrained) does not stop the demo: the engine serves the context modes and the
    returned reason says why the delta modes are unavailable.

    Returns:
        (engine, seconds per loading stage, why the translator is missing or ``None``).
    """
    from hyco_rag.engine import Engine
    from hyco_rag.models import DEFAULT_LLM, load_causal_lm
    from hyco_rag.prompts import SHORT_ANSWER_TEMPLATE

    timings: dict[str, float] = {}
    start = time.perf_counter()
    if report:
        report("loading the reader LLM")
    model, tokenizer = load_causal_lm(config.llm, device=config.device)
    timings["llm"] = time.perf_counter() - start
    translator = None
    missing: str | None = None
    if any(mode.uses_deltas for mode in config.mode_list):
        from hyco_rag.dyprag.translator import DEFAULT_TRANSLATOR_DIR, ParameterTranslator

        if report:
            report("loading the DyPRAG translator")
        start = time.perf_counter()
        where = config.translator or str(DEFAULT_TRANSLATOR_DIR)
        try:
            translator = ParameterTranslator.from_pretrained(config.translator, model=model)
        except Exception as error:  # noqa: BLE001 - any load failure only disables the delta modes; the reason is shown
            missing = f"the DyPRAG translator at {where} could not be loaded ({type(error).__name__}: {error})"
            logger.debug("translator load failed", exc_info=True)
        timings["translator"] = time.perf_counter() - start
    # The two-shot short-answer prompt: SmolLM2-135M answers in whole sentences without it, and
    # the shipped translator is distilled under it (hyco_rag.dyprag.training.distill).
    engine = Engine(
        model, tokenizer, translator, template=SHORT_ANSWER_TEMPLATE, name=config.llm or DEFAULT_LLM, missing_translator=missing
    )
    return engine, timings, missing


def build_index(config: DemoConfig, report: Reporter | None = None) -> tuple[DenseIndex, dict[str, float]]:
    """MiniLM over the bundled corpus; embeddings read from the disk cache when present."""
    from hyco_rag.data import load_demo_corpus
    from hyco_rag.retrieval import DenseIndex

    timings: dict[str, float] = {}
    if report:
        report("loading the retrieval encoder")
    start = time.perf_counter()
    index = DenseIndex.from_pretrained(config.encoder, device=config.device)
    timings["encoder"] = time.perf_counter() - start
    corpus = load_demo_corpus()
    if report:
        report(f"indexing {len(corpus)} passages")
    start = time.perf_counter()
    index.add(corpus, cache=config.index_cache)
    timings["index"] = time.perf_counter() - start
    return index, timings


def run_demo(
    config: DemoConfig | None = None,
    *,
    engine: Engine | None = None,
    index: DenseIndex | None = None,
    report: Reporter | None = None,
) -> DemoRun:
    """Retrieve for each bundled question and answer it in every ``config.modes`` mode.

    ``engine`` / ``index`` reuse already-loaded ones (otherwise they are loaded, and the engine
    is closed at the end).  ``report`` gets short progress messages.

    Raises:
        ValueError: none of the requested modes can run (the message says why).
    """
    import torch

    from hyco_rag.data import load_demo_questions
    from hyco_rag.engine import SamplingParams
    from hyco_rag.metrics import best_exact_match, best_f1

    config = config or DemoConfig()
    began = time.perf_counter()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    startup: dict[str, float] = {}
    questions = load_demo_questions()[: config.questions]
    cache_hit: bool | None = None
    if index is None:
        index, timings = build_index(config, report)
        startup.update(timings)
        cache_hit = index.cache_hit
    own_engine = engine is None
    translator_reason: str | None = None
    if engine is None:
        engine, timings, translator_reason = load_engine(config, report)
        startup.update(timings)
    try:
        unavailable: dict[str, str] = {}
        modes = list(config.mode_list)
        if any(mode.uses_deltas for mode in modes) and engine.translator is None:
            why = translator_reason or engine.missing_translator or "this engine has no DyPRAG translator"
            for mode in modes:
                if mode.uses_deltas:
                    unavailable[mode.value] = why
        if any(mode.uses_soft_tokens for mode in modes):
            if report:
                report("loading the hybrid adapter")
            start = time.perf_counter()
            try:
                engine.hybrid  # noqa: B018 - loads it now (start-up cost), or says why the hybrid modes cannot run
            except Exception as error:  # noqa: BLE001 - a missing adapter disables the hybrid modes only
                for mode in modes:
                    if mode.uses_soft_tokens:
                        unavailable.setdefault(mode.value, f"no hybrid adapter ({type(error).__name__}: {error})")
            startup["hybrid"] = time.perf_counter() - start
        if any(mode.compresses and mode.value not in unavailable for mode in modes):
            if report:
                report("loading the HyCo compressor")
            start = time.perf_counter()
            try:
                engine.compressor  # noqa: B018 - loads it now, so its cost is start-up, not the first answer
            except Exception as error:  # noqa: BLE001 - a missing compressor disables the hyco modes only
                for mode in modes:
                    if mode.compresses:
                        unavailable.setdefault(
                            mode.value, f"the HyCo compressor could not be loaded ({type(error).__name__}: {error})"
                        )
            startup["compressor"] = time.perf_counter() - start
        modes = [mode for mode in modes if mode.value not in unavailable]
        if not modes:
            reasons = "; ".join(f"{name}: {why}" for name, why in unavailable.items())
            raise ValueError(f"none of the requested modes can run ({reasons}); try --modes rag,hyco")
        sampling = SamplingParams(max_tokens=config.max_new_tokens, stop=("\n",))
        results: list[QuestionResult] = []
        ready = time.perf_counter() - began
        first_answer: float | None = None
        for number, item in enumerate(questions, 1):
            if report:
                report(f"question {number}/{len(questions)}")
            hits = index.search(item.question, config.k)
            documents = [hit.passage.text for hit in hits]
            prepared = []
            for mode in modes:
                start = time.perf_counter()
                request = engine.ask(item.question, documents, mode=mode, rate=config.rate if mode.compresses else None)
                prepared.append((mode, request, time.perf_counter() - start))
            if config.sequential:
                completions = [engine.generate(request, sampling) for _, request, _ in prepared]
            else:
                # Submitted together: the worker decodes this question's modes in one batch.
                handles = [engine.submit(request, sampling) for _, request, _ in prepared]
                completions = [handle.result() for handle in handles]
            result = QuestionResult(
                question=item.question,
                gold=list(item.answers),
                retrieved_ids=[hit.passage.id for hit in hits],
                retrieved_titles=[hit.passage.title for hit in hits],
                gold_retrieved=any(hit.passage.id == item.passage_id for hit in hits),
            )
            for (mode, request, prepare_s), completion in zip(prepared, completions):
                text = completion.text
                result.answers[mode.value] = ModeAnswer(
                    mode=mode.value,
                    answer=text,
                    f1=best_f1(text, item.answers),
                    em=best_exact_match(text, item.answers),
                    context_tokens=request.context_tokens,
                    passage_tokens=request.passage_tokens,
                    prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens,
                    seconds=prepare_s + completion.timings.get("generate", 0.0),
                    prepare_seconds=prepare_s,
                )
            results.append(result)
            if first_answer is None:
                first_answer = time.perf_counter() - began
    finally:
        if own_engine:
            engine.close()
    return DemoRun(
        config=config,
        modes=[mode.value for mode in modes],
        unavailable=unavailable,
        results=results,
        startup=startup,
        ready_s=ready,
        first_answer_s=first_answer,
        total_s=time.perf_counter() - began,
        index_cache_hit=cache_hit,
        threads=torch.get_num_threads(),
    )
