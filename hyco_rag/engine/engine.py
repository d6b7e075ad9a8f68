"""The serving engine: one request pipeline for every path, one worker that owns the model.

Data flows one way::

    messages + documents --prepare--> [compress (HyCo)] -> [deltas (DyPRAG, cached per passage)]
                         -> prompt (hyco_rag.prompts) -> PreparedRequest
    PreparedRequest + SamplingParams --submit--> worker (continuous batching, per-row deltas)
                         -> text pieces ... -> Completion

``ChatHyCo``, ``HyCoLLM``, the LlamaIndex postprocessors, the OpenAI-compatible server, the
demo and the benchmarks are all thin clients of :class:`Engine`: they turn their own message and
document types into chat dicts and passage strings, call :meth:`Engine.prepare`, then one of
:meth:`Engine.generate` / :meth:`Engine.agenerate` / :meth:`Engine.stream` /
:meth:`Engine.astream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from hyco_rag.engine.batch import DecodeBatch, eos_token_ids
from hyco_rag.engine.modes import Mode
from hyco_rag.engine.request import Answer, Completion, PreparedRequest
from hyco_rag.engine.sampling import SamplingParams
from hyco_rag.engine.stats import EngineListener, EngineStats
from hyco_rag.engine.worker import EngineWorker, RequestHandle
from hyco_rag.prompts import DEFAULT_TEMPLATE, PromptTemplate, build_messages, render_chat
from hyco_rag.tokens import count_tokens

if TYPE_CHECKING:
    from hyco_rag.dyprag.delta import LoRADelta
    from hyco_rag.dyprag.encoding import PassageEncoder
    from hyco_rag.dyprag.translator import ParameterTranslator
    from hyco_rag.hybrid.soft import SoftContext

logger = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    """How the engine batches, bounds and caches.

    Attributes:
        max_batch_size: most rows decoded together (each may carry its own delta).
        max_queue: most requests waiting for a batch slot before new ones are refused.
        timeout_s: default per-request timeout (``None``: none); a timed-out request frees
            its slot at the next step.
        delta_cache_size: passages whose translated delta is kept (LRU by passage text); a
            passage seen again costs no encoding.  0 disables the cache.
        compression_rate: share of passage tokens HyCo keeps when a request names no budget.
        max_prompt_tokens: longest prompt accepted (default: the model's window).
    """

    max_batch_size: int = field(default=16, metadata={"help": "rows decoded together"})
    max_queue: int = field(default=64, metadata={"help": "requests waiting for a slot before overload"})
    timeout_s: float | None = field(default=300.0, metadata={"help": "default per-request timeout"})
    delta_cache_size: int = field(default=1024, metadata={"help": "passages whose delta is cached"})
    compression_rate: float = field(default=0.25, metadata={"help": "HyCo budget without an explicit one"})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": "longest prompt accepted"})

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.delta_cache_size, bool) or not isinstance(self.delta_cache_size, int) or self.delta_cache_size < 0:
            raise ValueError(f"delta_cache_size must be an integer >= 0, got {self.delta_cache_size!r}")
        if self.timeout_s is not None and not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0 or None, got {self.timeout_s!r}")
        if not (
            isinstance(self.compression_rate, float | int)
            and not isinstance(self.compression_rate, bool)
            and 0 < self.compression_rate <= 1
        ):
            raise ValueError(f"compression_rate must be in (0, 1], got {self.compression_rate!r}")


class _DeltaCache:
    """LRU of one passage's delta by its text (translation is deterministic per passage)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, LoRADelta] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> LoRADelta | None:
        with self._lock:
            delta = self._items.get(text)
            if delta is not None:
                self._items.move_to_end(text)
            return delta

    def put(self, text: str, delta: LoRADelta) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._items[text] = delta
            self._items.move_to_end(text)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class Engine:
    """Serves one causal LM (with an optional DyPRAG translator and HyCo compressor).

    Args:
        model / tokenizer: the served HF causal LM and its tokenizer.
        translator: passage embedding -> LoRA deltas (checked against the model); ``None``
            serves the context modes only, and delta modes raise ``missing_translator`` (or a
            default message).
        compressor: HyCo compressor for the compressing modes (loaded on first use when
            ``None``).
        hybrid: the hybrid adapter (or a :class:`~hyco_rag.hybrid.soft.SoftContext` around one)
            for ``hybrid`` / ``combine-hybrid``; ``None`` loads the shipped one on first use.
        config: batching, bounds and caches.
        template: the QA prompt wording (one for every mode, so scores compare).
        name: the model's id as clients name it.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        translator: ParameterTranslator | None = None,
        *,
        compressor: Any | None = None,
        config: EngineConfig | None = None,
        template: PromptTemplate = DEFAULT_TEMPLATE,
        name: str | None = None,
        missing_translator: str | None = None,
        encoder: PassageEncoder | None = None,
        hybrid: Any | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.template = template
        self.name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.translator = translator
        self.missing_translator = missing_translator
        self._compressor = compressor
        self._compressor_lock = threading.Lock()
        self._hybrid = hybrid
        self._hybrid_lock = threading.Lock()
        self._budget_tokenizer: Any = None
        self.tokenizer_lock = threading.RLock()
        self.stats = EngineStats()
        self.listeners: list[EngineListener] = [self.stats]
        self._delta_cache = _DeltaCache(self.config.delta_cache_size)
        self._encoder = encoder
        injector = None
        if translator is not None:
            translator.check_compatible(model, translator.config.delta_config)
            translator.to(next(model.parameters()).device)
        from hyco_rag.dyprag.injection import DeltaInjector

        delta_config = translator.config.delta_config if translator is not None else None
        with contextlib.suppress(ValueError):  # a model without the MLP targets serves no deltas
            injector = DeltaInjector(model, delta_config)
        self.injector = injector
        self._worker = EngineWorker(
            DecodeBatch(model, tokenizer, injector, eos_token_ids(model, tokenizer), decode_lock=lambda: self.tokenizer_lock),
            max_batch_size=self.config.max_batch_size,
            max_queue=self.config.max_queue,
            listeners=self.listeners,
        )

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        translator: str | None = None,
        *,
        device: str | None = None,
        config: EngineConfig | None = None,
        **kwargs: Any,
    ) -> Engine:
        """Load the served model (default: embedded SmolLM2-135M-Instruct) and its translator
        (default: the one shipped for it; without one only the context modes work)."""
        from hyco_rag.engine.registry import load_engine_parts

        parts = load_engine_parts(model, translator, device)
        return cls(
            parts.model,
            parts.tokenizer,
            parts.translator,
            config=config,
            name=parts.name,
            missing_translator=parts.missing_translator,
            **kwargs,
        )

    # ------------------------------------------------------------------ properties

    @property
    def window(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)

    @property
    def queue_depth(self) -> int:
        return self._worker.queue_depth

    @property
    def running(self) -> int:
        return self._worker.running

    @property
    def delta_cache_entries(self) -> int:
        return len(self._delta_cache)

    def add_listener(self, listener: EngineListener) -> None:
        """Also report steps, requests and delta-cache lookups to ``listener``."""
        self.listeners.append(listener)

    def remove_listener(self, listener: EngineListener) -> None:
        """Stop reporting to ``listener`` (no error when it was not listening)."""
        if listener in self.listeners:
            self.listeners.remove(listener)

    @property
    def closed(self) -> bool:
        """Whether the engine was closed or its worker died (nothing more is served)."""
        return self._worker.closed

    def close(self) -> None:
        """Stop the worker (waiting and running requests end with ``EngineClosedError``)."""
        self._worker.close()

    # ------------------------------------------------------------------ tokens

    def count_tokens(self, text: str) -> int:
        with self.tokenizer_lock:
            return count_tokens(self.tokenizer, text)

    def encode(self, text: str) -> list[int]:
        with self.tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Chat messages rendered in the model's template (see :func:`hyco_rag.prompts.render_chat`)."""
        with self.tokenizer_lock:
            return render_chat(self.tokenizer, messages)

    # ------------------------------------------------------------------ deltas

    @property
    def encoder(self) -> PassageEncoder:
        if self._encoder is None:
            from hyco_rag.dyprag.encoding import PassageEncoder

            self._encoder = PassageEncoder(self.model, self.tokenizer, cache_size=0)  # the engine caches deltas
        return self._encoder

    def passage_deltas(self, passages: Sequence[str]) -> list[LoRADelta]:
        """One delta per passage: from the cache, or encoded and translated on the worker."""
        if self.translator is None:
            raise ValueError(self.missing_translator or "this engine has no parameter translator; delta modes need one")
        passages = list(passages)
        found = {text: self._delta_cache.get(text) for text in passages}
        missing = list(dict.fromkeys(text for text, delta in found.items() if delta is None))
        hits = sum(1 for text in passages if found[text] is not None)
        for listener in self.listeners:
            listener.on_delta_cache(hits, len(passages) - hits)
        if missing:
            for text, delta in zip(missing, self._worker.run_batched(missing, self._translate)):
                delta.validate()
                found[text] = delta
                self._delta_cache.put(text, delta)
        return [found[text] for text in passages]  # type: ignore[misc]

    def _translate(self, passages: list[str]) -> list[LoRADelta]:
        """Encode and translate passages (on the worker: encoding runs the served model)."""
        assert self.translator is not None
        unique = list(dict.fromkeys(passages))
        deltas = dict(zip(unique, self.translator.translate(self.encoder.encode(unique))))
        return [deltas[text] for text in passages]

    def combined_delta(self, passages: Sequence[str]) -> LoRADelta | None:
        """The request's delta: its passages' deltas combined (``None`` without passages)."""
        from hyco_rag.dyprag.delta import LoRADelta

        if not passages:
            return None
        deltas = self.passage_deltas(passages)  # raises when there is no translator
        assert self.translator is not None
        return LoRADelta.combine(deltas, self.translator.config.delta_config.combine)

    # ------------------------------------------------------------------ compression

    @property
    def compressor(self) -> Any:
        """The HyCo compressor (the shipped default, loaded on first use)."""
        with self._compressor_lock:
            if self._compressor is None:
                from hyco_rag.engine.registry import get_compressor

                self._compressor = get_compressor()
            return self._compressor

    def _compress(
        self, compressor: Any, question: str, texts: list[str], rate: float | None, target_tokens: int | None
    ) -> list[str]:
        budget: dict[str, Any] = {}
        if target_tokens is not None:
            budget["target_tokens"] = target_tokens
        else:
            budget["rate"] = rate if rate is not None else self.config.compression_rate
        from hyco_rag.compression import HyCoCompressor

        if isinstance(compressor, HyCoCompressor):
            # The budget is counted in the served model's tokens, with a copy of its tokenizer:
            # compression runs in the caller's thread while the worker detokenizes.
            with self._compressor_lock:
                if self._budget_tokenizer is None:
                    with self.tokenizer_lock:
                        self._budget_tokenizer = copy.deepcopy(self.tokenizer)
            budget["target_tokenizer"] = self._budget_tokenizer
        result = compressor.compress(question, texts, **budget)
        out = getattr(result, "texts", None)
        if not isinstance(out, (list, tuple)) or not all(isinstance(t, str) for t in out):
            raise TypeError("compressor.compress(query, documents) must return an object whose .texts is a list of strings")
        return list(out)

    # ------------------------------------------------------------------ soft tokens

    @property
    def hybrid(self) -> SoftContext:
        """The hybrid adapter's soft-token maker (the shipped adapter, loaded on first use).

        Raises:
            ValueError: no adapter was given and none is shipped for this model.
        """
        from hyco_rag.hybrid.adapter import AdapterMismatchError, HybridAdapter
        from hyco_rag.hybrid.soft import SoftContext

        with self._hybrid_lock:
            if self._hybrid is None:
                try:
                    self._hybrid = HybridAdapter.from_pretrained(model=self.model)
                except (FileNotFoundError, AdapterMismatchError) as error:
                    raise ValueError(
                        f"modes 'hybrid' and 'combine-hybrid' need a hybrid adapter for this model ({error}); pass "
                        "hybrid=<HybridAdapter or folder saved by save_pretrained>"
                    ) from error
            if isinstance(self._hybrid, (str, os.PathLike)):
                self._hybrid = HybridAdapter.from_pretrained(self._hybrid, model=self.model)
            if isinstance(self._hybrid, HybridAdapter):
                self._hybrid = SoftContext(self._hybrid, self.model, self.tokenizer)
            return self._hybrid  # type: ignore[no-any-return]

    @hybrid.setter
    def hybrid(self, adapter: Any) -> None:
        """Serve the hybrid modes with ``adapter`` (a ``HybridAdapter``, a ``SoftContext`` or
        a folder saved by ``save_pretrained``), e.g. on an engine from the registry."""
        with self._hybrid_lock:
            self._hybrid = adapter

    @property
    def has_hybrid(self) -> bool:
        """Whether an adapter was given or loaded (the shipped one may still load on first use)."""
        return self._hybrid is not None

    def soft_tokens(self, question: str, passages: Sequence[str], *, branch: str | None = None) -> torch.Tensor:
        """``[k, hidden]`` soft tokens of ``passages`` for ``question`` (on the job thread:
        it runs the served model; concurrent requests' soft tokens share its calls)."""
        self.hybrid  # noqa: B018 - load (or refuse) in the caller's thread, not on the job thread
        return self._worker.run_batched([(question, tuple(passages), branch)], self._make_soft_tokens)[0]  # type: ignore[no-any-return]

    def _make_soft_tokens(self, items: list[tuple[str, tuple[str, ...], str | None]]) -> list[torch.Tensor]:
        """Soft tokens of ``(question, passages, branch)`` items, one adapter call per branch."""
        groups: dict[str | None, list[int]] = {}
        for i, (_, _, branch) in enumerate(items):
            groups.setdefault(branch, []).append(i)
        out: list[torch.Tensor] = [torch.empty(0)] * len(items)
        for branch, indices in groups.items():
            made = self.hybrid.soft_tokens([items[i][0] for i in indices], [list(items[i][1]) for i in indices], branch=branch)
            for i, soft in zip(indices, made):
                out[i] = soft
        return out

    # ------------------------------------------------------------------ preparing

    def prepare(
        self,
        messages: Sequence[Mapping[str, str]] = (),
        documents: Sequence[str] | None = None,
        *,
        mode: Mode | str | None = None,
        question: str | None = None,
        prompt: str | None = None,
        keep_prompt: bool = False,
        compressor: Any | None = None,
        rate: float | None = None,
        target_tokens: int | None = None,
        delta: LoRADelta | None = None,
        soft_embeds: torch.Tensor | None = None,
        soft_branch: str | None = None,
    ) -> PreparedRequest:
        """Build one request: documents -> [compression] -> [deltas] -> prompt (blocking).

        Args:
            messages: the conversation as ``{"role", "content"}`` dicts.
            documents: passage texts.  ``None`` makes a plain chat turn over ``messages`` (or
                ``prompt``); with documents (even ``[]``) the question is worded with the QA
                template and ``mode`` decides where the passages go.
            mode: see :class:`~hyco_rag.engine.modes.Mode` (default ``combine``).
            question: the question, when it is not the last user message.
            prompt: an already-rendered prompt (plain turns and ``keep_prompt``).
            keep_prompt: keep ``prompt``/``messages`` as they are and only add the deltas (a
                framework whose own template already placed the context).
            compressor: a compressor for this request's ``hyco``/``combine-hyco`` compression
                instead of the engine's HyCo (any object with ``.compress(query, documents,
                rate=|target_tokens=)`` returning ``.texts``).
            rate / target_tokens: the compression budget (default ``config.compression_rate``).
            delta: an explicit delta (e.g. a PRAG LoRA) instead of translating the passages.
            soft_embeds: explicit ``[k, hidden]`` soft tokens for the hybrid modes instead of the
                adapter's (controls such as another question's soft tokens).
            soft_branch: ``"mlp"`` or ``"qformer"``: the adapter's branch alone (ablations).

        Raises:
            ValueError: bad messages, documents, mode or budget, a prompt longer than the
                window, or a delta mode without a translator; nothing was submitted.
        """
        history = [_check_message(i, m) for i, m in enumerate(messages)]
        if isinstance(documents, str):
            raise ValueError("documents must be a list of strings, not one string")
        if documents is None:  # a plain chat turn
            if prompt is None and not history:
                raise ValueError("a chat turn needs at least one message")
            text = prompt if prompt is not None else self.render(history)
            return self._finish_prepare(PreparedRequest(text, []), delta)

        chosen = Mode.parse(mode if mode is not None else Mode.COMBINE)
        _check_budget(rate, target_tokens)
        for i, doc in enumerate(documents):
            if not isinstance(doc, str):
                raise ValueError(f"documents[{i}] must be a string, got {type(doc).__name__}")
        texts = [doc for doc in documents if doc.strip()]
        request = PreparedRequest("", [], mode=chosen, documents=len(texts))
        with self.tokenizer_lock:
            request.passage_tokens = sum(count_tokens(self.tokenizer, t) for t in texts)
        if chosen.uses_deltas and delta is None and texts:
            start = time.perf_counter()
            delta = self.combined_delta(texts)
            request.timings["translate"] = time.perf_counter() - start
            request.passages_injected = len(texts)
        elif not chosen.uses_deltas:
            delta = None

        if keep_prompt:
            if prompt is None and not history:
                raise ValueError("keep_prompt needs the prompt or the messages to keep")
            if chosen.uses_soft_tokens:
                raise ValueError(f"mode {chosen.value!r} places soft tokens in the prompt, so it cannot keep a prompt as it is")
            request.prompt = prompt if prompt is not None else self.render(history)
            return self._finish_prepare(request, delta)

        if question is None:
            if not history or history[-1]["role"] != "user":
                raise ValueError("with documents, the last message must be the user message that asks the question")
            question, history = history[-1]["content"], history[:-1]
        context = texts if chosen.uses_context else []
        soft = None
        if chosen.uses_soft_tokens and texts:
            start = time.perf_counter()
            soft = soft_embeds if soft_embeds is not None else self.soft_tokens(question, texts, branch=soft_branch)
            if soft.dim() != 2 or soft.shape[1] != int(self.model.config.hidden_size):
                raise ValueError(f"soft_embeds must be [k, {self.model.config.hidden_size}], got {tuple(soft.shape)}")
            request.timings["soft"] = time.perf_counter() - start
            # One budget: the soft tokens count, the kept text gets the rest.
            total = (
                target_tokens
                if target_tokens is not None
                else round((rate if rate is not None else self.config.compression_rate) * request.passage_tokens)
            )
            rate, target_tokens = None, total - soft.shape[0]
        if chosen.compresses and texts:
            start = time.perf_counter()
            if target_tokens is not None and target_tokens < 1:
                context = []  # the soft tokens took the whole budget
            else:
                context = self._compress(
                    compressor if compressor is not None else self.compressor, question, texts, rate, target_tokens
                )
            request.timings["compress"] = time.perf_counter() - start
        with self.tokenizer_lock:
            request.context_tokens = sum(count_tokens(self.tokenizer, t) for t in context)
        if soft is not None:
            from hyco_rag.hybrid.soft import SOFT_MARKER

            request.soft_embeds = soft
            request.context_tokens += soft.shape[0]
            context = [SOFT_MARKER, *context]
        turn = build_messages(question, context, self.template)
        if turn[0]["role"] == "system" and history and history[0]["role"] == "system":
            turn = turn[1:]  # the conversation's own system message wins
        request.prompt = self.render(history + turn)
        return self._finish_prepare(request, delta)

    def _finish_prepare(self, request: PreparedRequest, delta: LoRADelta | None) -> PreparedRequest:
        if delta is not None:
            delta.validate()
            if self.injector is None:
                raise ValueError("this model has no target modules for deltas")
        request.delta = delta
        if request.soft_embeds is not None:
            from hyco_rag.hybrid.soft import soft_prompt_ids

            placeholder = getattr(self.tokenizer, "pad_token_id", None) or 0
            request.prompt_ids, request.soft_start = soft_prompt_ids(
                request.prompt, self.encode, request.soft_tokens, placeholder
            )
        else:
            request.prompt_ids = self.encode(request.prompt)
        if not request.prompt_ids:
            raise ValueError("the prompt is empty")
        limit = self.config.max_prompt_tokens or self.window
        if len(request.prompt_ids) >= min(limit, self.window):
            raise ValueError(
                f"the prompt has {len(request.prompt_ids)} tokens, more than this engine accepts "
                f"({min(limit, self.window)}); use mode 'dyprag' (passages become deltas) or 'hyco' (compressed)"
            )
        return request

    async def aprepare(self, *args: Any, **kwargs: Any) -> PreparedRequest:
        """:meth:`prepare` off the event loop (compression and encoding block)."""
        return await asyncio.to_thread(self.prepare, *args, **kwargs)

    # ------------------------------------------------------------------ generating

    def _sampling(self, request: PreparedRequest, sampling: SamplingParams | None) -> SamplingParams:
        sampling = sampling or SamplingParams()
        if request.prompt_tokens + sampling.max_tokens > self.window:
            raise ValueError(
                f"the prompt's {request.prompt_tokens} tokens plus max_tokens={sampling.max_tokens} exceed the "
                f"model's window of {self.window}"
            )
        return sampling

    def submit(
        self,
        request: PreparedRequest,
        sampling: SamplingParams | None = None,
        *,
        timeout_s: float | None = -1.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> RequestHandle:
        """Queue ``request`` for decoding; the handle streams or returns its completion.

        ``timeout_s=-1`` (the default) uses ``config.timeout_s``; ``None`` waits forever.

        Raises:
            EngineOverloadedError: the waiting queue is full.
            EngineClosedError: the engine was closed.
        """
        timeout = self.config.timeout_s if timeout_s == -1.0 else timeout_s
        return self._worker.submit(request, self._sampling(request, sampling), timeout_s=timeout, loop=loop)

    def generate(self, request: PreparedRequest, sampling: SamplingParams | None = None, **kwargs: Any) -> Completion:
        """Decode ``request`` to the end (blocking; concurrent callers share batches)."""
        return self.submit(request, sampling, **kwargs).result()

    def generate_many(self, requests: Sequence[PreparedRequest], sampling: SamplingParams | None = None) -> list[Completion]:
        """Decode several requests together (they are all queued before the first is awaited)."""
        handles = [self.submit(request, sampling) for request in requests]
        return [handle.result() for handle in handles]

    async def agenerate(self, request: PreparedRequest, sampling: SamplingParams | None = None, **kwargs: Any) -> Completion:
        handle = self.submit(request, sampling, loop=asyncio.get_running_loop(), **kwargs)
        try:
            return await handle.aresult()
        except asyncio.CancelledError:
            handle.cancel()
            raise

    def stream(
        self, request: PreparedRequest, sampling: SamplingParams | None = None, **kwargs: Any
    ) -> Iterator[str | Completion]:
        """Text pieces as generated, then the :class:`Completion`; closing the iterator cancels."""
        return iter(self.submit(request, sampling, **kwargs))

    async def astream(
        self, request: PreparedRequest, sampling: SamplingParams | None = None, **kwargs: Any
    ) -> AsyncIterator[str | Completion]:
        handle = self.submit(request, sampling, loop=asyncio.get_running_loop(), **kwargs)
        try:
            async for item in handle:
                yield item
        finally:
            handle.cancel()  # no-op once finished; frees the slot when the consumer stopped early

    # ------------------------------------------------------------------ questions

    def ask(
        self, question: str, documents: Sequence[str] = (), *, mode: Mode | str | None = None, **kwargs: Any
    ) -> PreparedRequest:
        """:meth:`prepare` for a single QA turn."""
        if isinstance(documents, str):
            raise ValueError("documents must be a list of strings, not one string")
        return self.prepare([{"role": "user", "content": question}], list(documents), mode=mode, **kwargs)

    def answer(
        self,
        question: str,
        documents: Sequence[str] = (),
        *,
        mode: Mode | str | None = None,
        sampling: SamplingParams | None = None,
        **kwargs: Any,
    ) -> Answer:
        """Answer one question with its passages in ``mode``."""
        request = self.ask(question, documents, mode=mode, **kwargs)
        return Answer(request, self.generate(request, sampling))

    def answer_batch(
        self,
        questions: Sequence[str],
        documents: Sequence[Sequence[str]] | None = None,
        *,
        mode: Mode | str | Sequence[Mode | str] | None = None,
        sampling: SamplingParams | None = None,
        deltas: Sequence[LoRADelta | None] | None = None,
        **kwargs: Any,
    ) -> list[Answer]:
        """Answer many questions, batched; ``mode`` may be one per question and ``deltas``
        overrides the translator (e.g. PRAG LoRAs) for rows whose mode uses deltas."""
        if isinstance(questions, str):
            raise ValueError("answer_batch takes a list of questions; use answer() for one")
        questions = list(questions)
        docs = [list(d) for d in documents] if documents is not None else [[] for _ in questions]
        modes = [mode] * len(questions) if mode is None or isinstance(mode, (str, Mode)) else list(mode)
        for name, values in (("document lists", docs), ("modes", modes), ("deltas", deltas)):
            if values is not None and len(values) != len(questions):
                raise ValueError(f"got {len(questions)} questions but {len(values)} {name}")
        requests = [
            self.ask(q, d, mode=m, delta=deltas[i] if deltas is not None else None, **kwargs)
            for i, (q, d, m) in enumerate(zip(questions, docs, modes))
        ]
        return [Answer(r, c) for r, c in zip(requests, self.generate_many(requests, sampling))]


def _check_message(index: int, message: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
        raise ValueError(f"messages[{index}] must be a dict with a string 'content'")
    role = message.get("role")
    if role not in ("system", "user", "assistant"):
        raise ValueError(f"messages[{index}] has role {role!r}; roles are 'system', 'user' and 'assistant'")
    return {"role": str(role), "content": str(message["content"])}


def _check_budget(rate: float | None, target_tokens: int | None) -> None:
    if rate is not None and target_tokens is not None:
        raise ValueError("give rate or target_tokens, not both")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0 < rate <= 1
    ):
        raise ValueError(f"rate must be a number in (0, 1], got {rate!r}")
    if target_tokens is not None and (isinstance(target_tokens, bool) or not isinstance(target_tokens, int) or target_tokens < 1):
        raise ValueError(f"target_tokens must be an integer >= 1, got {target_tokens!r}")
