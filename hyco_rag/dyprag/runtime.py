"""The served model: chat generation where retrieved passages become per-request LoRA deltas.

Modes (per request, or per row of a batch):

=========== ============================== ===============================================
mode        passages in the prompt          deltas
=========== ============================== ===============================================
``none``    no (closed book)                no
``rag``     yes                             no
``dyprag``  no                              yes: translator(passage embedding), combined
``combine`` yes (or compressed, see below)  yes
=========== ============================== ===============================================

In ``combine`` mode a ``compressor`` (any object with ``.compress(query, documents)`` returning
something with ``.texts``, e.g. :class:`hyco_rag.compression.HyCoCompressor`) shortens the
passages placed in the prompt; the deltas always come from the full passages.

Isolation: every generation holds :func:`~hyco_rag.dyprag.injection.model_lock` from passage
encoding to the last token, and deltas are applied per batch row, so concurrent requests
(threads or asyncio) produce exactly what they would sequentially.  Empty or whitespace-only
documents are ignored, as the prompt builder ignores them; a request whose documents are all
empty is answered closed-book with no delta.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch

from hyco_rag.dyprag.config import DeltaConfig
from hyco_rag.dyprag.delta import LoRADelta
from hyco_rag.dyprag.encoding import PassageEncoder
from hyco_rag.dyprag.injection import DeltaInjector, model_lock
from hyco_rag.generation import ChatGenerator, Generation, GenerationConfig
from hyco_rag.prompts import count_tokens

if TYPE_CHECKING:
    from hyco_rag.dyprag.translator import ParameterTranslator

logger = logging.getLogger(__name__)

MODES = ("none", "rag", "dyprag", "combine")
_USES_DELTAS = {"dyprag", "combine"}
_USES_CONTEXT = {"rag", "combine"}


class Compressor(Protocol):
    """What ``combine`` mode needs from a context compressor."""

    def compress(self, query: str, documents: Sequence[str], *args: Any, **kwargs: Any) -> Any: ...


@dataclass
class ParametricAnswer:
    """One answer with what it cost.

    Attributes:
        text: the generated answer.
        mode: the mode that produced it.
        prompt_tokens / completion_tokens: as generated.
        context_tokens: tokens of passage text placed in the prompt (0 for ``dyprag``).
        passage_tokens: tokens of the (non-empty) passages of the request, i.e. what
            standard RAG would have put in the prompt.
        passages_injected: passages turned into deltas.
        delta_rank: rank of the applied (combined) delta, 0 without one.
        timings: seconds spent in ``encode``, ``translate``, ``compress`` and ``generate``;
            ``generate`` is the request's share of a batched generation.
    """

    text: str
    mode: str
    prompt_tokens: int
    completion_tokens: int
    context_tokens: int = 0
    passage_tokens: int = 0
    passages_injected: int = 0
    delta_rank: int = 0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Row:
    question: str
    documents: list[str]
    mode: str
    prompt: str = ""
    context: list[str] = field(default_factory=list)
    delta: LoRADelta | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


class ParametricRAG:
    """A chat model that absorbs retrieved passages as LoRA deltas, context, or both.

    Args:
        generator: the served model (:class:`~hyco_rag.generation.ChatGenerator`).
        translator: passage embedding -> deltas; checked against the model here.  May be
            ``None`` if only ``none``/``rag`` modes or explicit ``deltas=`` are used.
        mode: default mode of requests.
        combine: ``"mean"`` or ``"sum"`` of the passages' deltas (default: the translator's).
        compressor: optional context compressor for ``combine`` mode.
        encoder: passage encoder (default: a :class:`PassageEncoder` on the served model).
    """

    def __init__(
        self,
        generator: ChatGenerator,
        translator: ParameterTranslator | None = None,
        *,
        mode: str = "combine",
        combine: str | None = None,
        compressor: Compressor | None = None,
        encoder: PassageEncoder | None = None,
    ) -> None:
        self.generator = generator
        self.mode = _check_mode(mode)
        self.translator = translator
        if translator is not None:
            delta_config = translator.config.delta_config
            translator.check_compatible(generator.model, delta_config)
            device = generator.device
            translator.to(device)
        else:
            delta_config = DeltaConfig()
        if combine is not None:
            delta_config = replace(delta_config, combine=combine)  # validated by __post_init__
        self.delta_config = delta_config
        self.injector = DeltaInjector(generator.model, delta_config)
        self.encoder = encoder or PassageEncoder(generator.model, generator.tokenizer)
        if compressor is not None and not callable(getattr(compressor, "compress", None)):
            raise TypeError(f"compressor must have a .compress(query, documents) method, got {type(compressor).__name__}")
        self.compressor = compressor

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        translator: str | None = None,
        *,
        device: str | torch.device | None = None,
        config: GenerationConfig | None = None,
        **kwargs: Any,
    ) -> ParametricRAG:
        """Load the served model (default: embedded SmolLM2-135M-Instruct) and a translator
        (default: the shipped one for it)."""
        from hyco_rag.dyprag.translator import ParameterTranslator

        generator = ChatGenerator.from_pretrained(model, device=device)
        if config is not None:
            generator.config = config
        loaded = ParameterTranslator.from_pretrained(translator, model=generator.model)
        return cls(generator, loaded, **kwargs)

    # ------------------------------------------------------------------ building blocks

    @property
    def model(self) -> torch.nn.Module:
        return self.generator.model

    @property
    def tokenizer(self) -> Any:
        return self.generator.tokenizer

    @property
    def window(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)

    def passage_deltas(self, documents: Sequence[str]) -> list[LoRADelta]:
        """One delta per (non-empty) passage, from the translator.

        Raises:
            ValueError: no translator, or an empty passage.
        """
        if self.translator is None:
            raise ValueError("this ParametricRAG has no translator: pass one, or give deltas= explicitly")
        documents = list(documents)
        if not documents:
            return []
        with model_lock(self.model):
            embeddings = self.encoder.encode(documents)
        return self.translator.translate(embeddings)

    def deltas_for(self, documents: Sequence[str]) -> LoRADelta | None:
        """The combined delta of a request's passages (``None`` when no passage has text)."""
        kept = [d for d in documents if isinstance(d, str) and d.strip()]
        if not kept:
            return None
        return LoRADelta.combine(self.passage_deltas(kept), self.delta_config.combine)

    def generate_prompts(
        self,
        prompts: Sequence[str],
        deltas: Sequence[LoRADelta | None] | None = None,
        config: GenerationConfig | None = None,
    ) -> list[Generation]:
        """Generate already-rendered prompts, row ``i`` under ``deltas[i]`` (or none).

        The low-level entry for integrations that render their own chat prompts.  Rows are
        batched ``config.batch_size`` at a time; each batch is one ``generate`` call in which
        rows carry different deltas.
        """
        config = config or self.generator.config
        prompts = list(prompts)
        deltas = list(deltas) if deltas is not None else [None] * len(prompts)
        if len(deltas) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(deltas)} deltas")
        for delta in deltas:  # fail before any generation, nothing applied
            if delta is not None:
                delta.validate()
        self._check_window(prompts, config)
        results: list[Generation] = []
        single = replace(config, batch_size=max(1, config.batch_size))
        with model_lock(self.model):
            for start in range(0, len(prompts), single.batch_size):
                chunk = prompts[start : start + single.batch_size]
                chunk_deltas = deltas[start : start + single.batch_size]
                scope = (
                    self.injector.apply(chunk_deltas)
                    if any(d is not None for d in chunk_deltas)
                    else contextlib.nullcontext()
                )
                with scope:
                    results.extend(self.generator.generate_prompts(chunk, single))
        return results

    def stream_prompt(
        self, prompt: str, delta: LoRADelta | None = None, config: GenerationConfig | None = None
    ) -> Iterator[str]:
        """Yield text pieces of one rendered prompt generated under ``delta``."""
        config = config or self.generator.config
        if delta is not None:
            delta.validate()
        self._check_window([prompt], config)
        with model_lock(self.model):
            scope = self.injector.apply([delta]) if delta is not None else contextlib.nullcontext()
            with scope:
                yield from self.generator.stream_prompt(prompt, config)

    def _check_window(self, prompts: Sequence[str], config: GenerationConfig) -> None:
        window = self.window
        for prompt in prompts:
            n = count_tokens(self.tokenizer, prompt)
            if n + config.max_new_tokens > window:
                raise ValueError(
                    f"the prompt has {n} tokens, which with max_new_tokens={config.max_new_tokens} exceeds "
                    f"the model's window of {window}; use mode='dyprag' (passages become deltas, encoded "
                    "window by window) or a compressor"
                )

    # ------------------------------------------------------------------ request API

    def _prepare(
        self,
        questions: Sequence[str],
        documents: Sequence[Sequence[str]] | None,
        modes: Sequence[str],
        deltas: Sequence[LoRADelta | None] | None,
    ) -> list[_Row]:
        if isinstance(questions, str):
            raise ValueError("answer_batch takes a list of questions; use answer() for one")
        questions = list(questions)
        docs = [list(d) for d in documents] if documents is not None else [[] for _ in questions]
        if len(docs) != len(questions):
            raise ValueError(f"got {len(questions)} questions but {len(docs)} document lists")
        for i, row_docs in enumerate(docs):
            for j, doc in enumerate(row_docs):
                if not isinstance(doc, str):
                    raise ValueError(f"document {j} of question {i} must be a string, got {type(doc).__name__}")
        if deltas is not None and len(deltas) != len(questions):
            raise ValueError(f"got {len(questions)} questions but {len(deltas)} deltas")
        rows = [
            _Row(q, [d for d in row_docs if d.strip()], _check_mode(m))
            for q, row_docs, m in zip(questions, docs, modes)
        ]
        # Deltas: explicit ones win; otherwise translate every passage of every delta row at once.
        need = [i for i, row in enumerate(rows) if row.mode in _USES_DELTAS and row.documents]
        if deltas is not None:
            for i, row in enumerate(rows):
                if row.mode in _USES_DELTAS:
                    row.delta = deltas[i]
        elif need:
            if self.translator is None:
                raise ValueError("modes 'dyprag'/'combine' need a translator (or explicit deltas=)")
            flat = [doc for i in need for doc in rows[i].documents]
            start = time.perf_counter()
            embeddings = self.encoder.encode(flat)
            encode_s = time.perf_counter() - start
            start = time.perf_counter()
            passage_deltas = self.translator.translate(embeddings)
            offset = 0
            for i in need:
                count = len(rows[i].documents)
                rows[i].delta = LoRADelta.combine(passage_deltas[offset : offset + count], self.delta_config.combine)
                offset += count
            translate_s = time.perf_counter() - start
            for i in need:
                share = len(rows[i].documents) / max(1, len(flat))
                rows[i].timings.update(encode=encode_s * share, translate=translate_s * share)
        for row in rows:
            if row.mode in _USES_CONTEXT:
                row.context = row.documents
                if row.mode == "combine" and self.compressor is not None and row.documents:
                    start = time.perf_counter()
                    result = self.compressor.compress(row.question, row.documents)
                    texts = getattr(result, "texts", None)
                    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
                        raise TypeError("compressor.compress(...) must return an object whose .texts is a list of strings")
                    row.context = list(texts)
                    row.timings["compress"] = time.perf_counter() - start
            row.prompt = self.generator.prompt(row.question, row.context)
        return rows

    def answer_batch(
        self,
        questions: Sequence[str],
        documents: Sequence[Sequence[str]] | None = None,
        *,
        mode: str | Sequence[str] | None = None,
        deltas: Sequence[LoRADelta | None] | None = None,
        config: GenerationConfig | None = None,
    ) -> list[ParametricAnswer]:
        """Answer each question with its passages, in one mode or a mode per row.

        ``deltas`` overrides the translator (e.g. PRAG LoRAs trained per passage); it is used
        for the rows whose mode applies deltas.
        """
        questions = list(questions) if not isinstance(questions, str) else questions
        modes = [mode or self.mode] * len(questions) if mode is None or isinstance(mode, str) else list(mode)
        if len(modes) != len(questions):
            raise ValueError(f"got {len(questions)} questions but {len(modes)} modes")
        with model_lock(self.model):
            rows = self._prepare(questions, documents, modes, deltas)
            start = time.perf_counter()
            generations = self.generate_prompts([r.prompt for r in rows], [r.delta for r in rows], config)
            generate_s = (time.perf_counter() - start) / max(1, len(rows))
        answers = []
        for row, generation in zip(rows, generations):
            answers.append(
                ParametricAnswer(
                    text=generation.text,
                    mode=row.mode,
                    prompt_tokens=generation.prompt_tokens,
                    completion_tokens=generation.completion_tokens,
                    context_tokens=sum(count_tokens(self.tokenizer, t) for t in row.context if t.strip()),
                    passage_tokens=sum(count_tokens(self.tokenizer, t) for t in row.documents),
                    passages_injected=len(row.documents) if row.delta is not None else 0,
                    delta_rank=row.delta.rank if row.delta is not None else 0,
                    timings={**row.timings, "generate": generate_s},
                )
            )
        return answers

    def answer(
        self,
        question: str,
        documents: Sequence[str] = (),
        *,
        mode: str | None = None,
        deltas: LoRADelta | None = None,
        config: GenerationConfig | None = None,
    ) -> ParametricAnswer:
        """Answer one question (see :meth:`answer_batch`)."""
        if isinstance(documents, str):
            raise ValueError("documents must be a list of strings, not one string")
        return self.answer_batch(
            [question], [list(documents)], mode=mode, deltas=[deltas] if deltas is not None else None, config=config
        )[0]

    def stream(
        self,
        question: str,
        documents: Sequence[str] = (),
        *,
        mode: str | None = None,
        deltas: LoRADelta | None = None,
        config: GenerationConfig | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text pieces as they are generated."""
        if isinstance(documents, str):
            raise ValueError("documents must be a list of strings, not one string")
        with model_lock(self.model):
            (row,) = self._prepare([question], [list(documents)], [mode or self.mode], [deltas] if deltas is not None else None)
            yield from self.stream_prompt(row.prompt, row.delta, config)

    # ------------------------------------------------------------------ asyncio

    async def aanswer(self, question: str, documents: Sequence[str] = (), **kwargs: Any) -> ParametricAnswer:
        """:meth:`answer` in a worker thread; concurrent calls serialise on the model lock."""
        return await asyncio.to_thread(self.answer, question, documents, **kwargs)

    async def aanswer_batch(self, questions: Sequence[str], documents: Sequence[Sequence[str]] | None = None, **kwargs: Any) -> list[ParametricAnswer]:
        return await asyncio.to_thread(self.answer_batch, questions, documents, **kwargs)

    async def agenerate_prompts(
        self, prompts: Sequence[str], deltas: Sequence[LoRADelta | None] | None = None, config: GenerationConfig | None = None
    ) -> list[Generation]:
        return await asyncio.to_thread(self.generate_prompts, prompts, deltas, config)

    async def astream(self, question: str, documents: Sequence[str] = (), **kwargs: Any) -> AsyncIterator[str]:
        """Async version of :meth:`stream` (pieces cross from a worker thread via a queue)."""
        async for piece in _aiter_thread(lambda: self.stream(question, documents, **kwargs)):
            yield piece

    async def astream_prompt(
        self, prompt: str, delta: LoRADelta | None = None, config: GenerationConfig | None = None
    ) -> AsyncIterator[str]:
        async for piece in _aiter_thread(lambda: self.stream_prompt(prompt, delta, config)):
            yield piece


_DONE = object()


async def _aiter_thread(make_iterator: Any) -> AsyncIterator[str]:
    """Run a blocking iterator in a thread and yield its items on the event loop.

    If the consumer stops early, the producer finishes its generation (bounded by
    ``max_new_tokens``) in the background and its items are dropped.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in make_iterator():
                if not stop.is_set():
                    loop.call_soon_threadsafe(queue.put_nowait, item)
        except BaseException as error:  # handed to the consumer
            loop.call_soon_threadsafe(queue.put_nowait, error)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    task = loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        if task.done():
            await task
