"""Serving :class:`~hyco_rag.dyprag.runtime.ParametricRAG` to chat frameworks.

The LangChain chat model (``langchain_hyco.ChatHyCo``) and the LlamaIndex LLM
(``llama_index.llms.hyco.HyCoLLM``) are thin adapters over this module: they turn their own
message and document types into plain chat dicts and passage strings, and everything that
decides *what is generated* lives here, once:

- :func:`served_runtime`: a process-wide registry of loaded runtimes, so building many chat
  objects loads each model / translator / device once;
- :func:`prepare_request`: the rendered prompt and the delta of one call (the core QA template
  for questions with documents, as :meth:`ParametricRAG.answer` words it), with its costs;
- :class:`ServingRequest`: generation, async generation and (async) streaming of it, with stop
  sequences applied the same way whole or streamed (:class:`StopSequenceFilter`).

Nothing here imports LangChain or LlamaIndex.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyco_rag.generation import GenerationConfig
from hyco_rag.prompts import build_messages, count_tokens

if TYPE_CHECKING:
    from hyco_rag.dyprag.delta import LoRADelta
    from hyco_rag.dyprag.runtime import ParametricRAG

logger = logging.getLogger(__name__)

__all__ = [
    "Completion",
    "ServedRuntime",
    "ServingRequest",
    "StopSequenceFilter",
    "check_mode",
    "clear_served_runtimes",
    "prepare_request",
    "render_chat",
    "sampling_config",
    "served_runtime",
]

#: Modes of the runtime (literal here so that this module does not import torch at import time).
MODES = ("none", "rag", "dyprag", "combine")
USES_DELTAS = frozenset({"dyprag", "combine"})
USES_CONTEXT = frozenset({"rag", "combine"})


def check_mode(mode: Any) -> str:
    """``mode`` if it is one of :data:`MODES`, else a ``ValueError`` naming the choices."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


# --------------------------------------------------------------------------- shared runtimes


@dataclass
class ServedRuntime:
    """One loaded runtime, and why it has no translator when it has none.

    ``missing_translator`` is the error message the delta modes raise when the package ships
    no translator for the model (``none``/``rag`` still work).
    """

    runtime: ParametricRAG
    missing_translator: str | None = None


_RUNTIMES: dict[tuple[str, str | None, str], ServedRuntime] = {}
_RUNTIMES_LOCK = threading.Lock()


def served_runtime(model: str | None = None, translator: str | None = None, device: str | None = None) -> ServedRuntime:
    """Load (once per process) the runtime for ``model`` + ``translator`` on ``device``.

    Aliases of one model (``"smollm2"``, the HF id of the embedded default, ...) resolve to the
    same folder and share one runtime.  Without an explicit ``translator`` the shipped default
    is used; if the package ships none, the runtime still serves ``none``/``rag`` and the
    delta modes fail with an error that says so.  ``device=None`` picks CUDA when present.
    """
    import torch

    from hyco_rag.dyprag.runtime import ParametricRAG
    from hyco_rag.dyprag.translator import DEFAULT_TRANSLATOR_DIR, ParameterTranslator
    from hyco_rag.generation import ChatGenerator
    from hyco_rag.models import default_device, resolve_causal_lm

    resolved = resolve_causal_lm(model)
    target = str(torch.device(device) if device is not None else default_device())
    translator_key = str(Path(translator).expanduser().resolve()) if translator is not None else None
    key = (resolved, translator_key, target)
    with _RUNTIMES_LOCK:
        served = _RUNTIMES.get(key)
        if served is not None:
            return served
        start = time.perf_counter()
        generator = ChatGenerator.from_pretrained(resolved, device=target)
        missing = None
        try:
            loaded = ParameterTranslator.from_pretrained(translator_key, model=generator.model)
        except FileNotFoundError as error:
            if translator is not None:
                raise
            loaded = None
            missing = (
                f"no parameter translator is shipped at {DEFAULT_TRANSLATOR_DIR} ({error}); pass "
                "translator=<folder saved by ParameterTranslator.save_pretrained>, or use mode='rag'/'none'"
            )
            logger.warning("DyPRAG runtime for %s has no translator: only modes 'none'/'rag' work", resolved)
        served = ServedRuntime(ParametricRAG(generator, loaded), missing)
        _RUNTIMES[key] = served
        logger.info("Loaded DyPRAG runtime %s on %s in %.1fs", resolved, target, time.perf_counter() - start)
        return served


def served_runtime_count() -> int:
    """How many runtimes this process holds (tests check that metadata reads load nothing)."""
    with _RUNTIMES_LOCK:
        return len(_RUNTIMES)


def clear_served_runtimes() -> None:
    """Forget every loaded runtime (their memory is freed once no chat object holds them)."""
    with _RUNTIMES_LOCK:
        _RUNTIMES.clear()


# --------------------------------------------------------------------------- prompts


def render_chat(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """Chat-template rendering (plain ``role: text`` lines for models without a template)."""
    messages = [dict(m) for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"


def sampling_config(max_new_tokens: int, temperature: float) -> GenerationConfig:
    """One request's decoding settings: greedy at ``temperature == 0``, sampling above."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=float(temperature) if temperature > 0 else 1.0,
        batch_size=1,
    )


# --------------------------------------------------------------------------- stop sequences


class StopSequenceFilter:
    """Strip and cut generated text at stop sequences, the same way whole or streamed.

    Leading whitespace is dropped, trailing whitespace is held back until more text follows
    (and dropped at the end), and the text stops before the first stop sequence.  A tail that
    could still become a stop sequence is held back, so no stop text is ever emitted, however
    the pieces are split.  Feed pieces with :meth:`feed`, then call :meth:`finish` once.
    """

    def __init__(self, stop: Sequence[str] | None = None) -> None:
        if isinstance(stop, str):
            raise ValueError("stop must be a list of strings, not one string")
        self.stop = [s for s in (stop or []) if s]
        self.pending = ""
        self.started = False
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Take the next generated piece; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        self.pending += piece
        if not self.started:
            self.pending = self.pending.lstrip()
            if not self.pending:
                return ""
            self.started = True
        cuts = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if cuts:
            out = self.pending[: min(cuts)].rstrip()
            self.pending = ""
            self.stopped = True
            return out
        hold = 0
        for s in self.stop:  # longest suffix that is a proper prefix of a stop sequence
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        head = self.pending[: len(self.pending) - hold]
        hold += len(head) - len(head.rstrip())
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return out

    def finish(self) -> str:
        """The held-back text that turned out to be safe (right-stripped)."""
        out = "" if self.stopped else self.pending.rstrip()
        self.pending = ""
        return out

    def clean(self, text: str) -> str:
        """The whole text at once: what feeding it in any pieces would emit in total."""
        return self.feed(text) + self.finish()


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Completion:
    """The end of one generation: the cleaned text and what it cost.

    ``finish_reason`` is ``"stop"`` (end of sequence or a stop sequence) or ``"length"``
    (``max_new_tokens`` reached).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class ServingRequest:
    """One prepared generation: the rendered prompt, its delta and what it costs.

    ``mode`` is ``None`` for a plain chat turn (no documents).  ``timings`` holds the seconds
    spent in ``translate``, ``compress`` and ``generate``.
    """

    runtime: ParametricRAG
    prompt: str
    config: GenerationConfig
    delta: LoRADelta | None = None
    mode: str | None = None
    documents: int = 0
    context_tokens: int = 0
    passage_tokens: int = 0
    delta_rank: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def stats(self, completion: Completion | None = None) -> dict[str, Any]:
        """Plain, JSON-serialisable costs of this request (and of its completion when given)."""
        data: dict[str, Any] = {
            "mode": self.mode,
            "documents": self.documents,
            "passages_injected": self.documents if self.delta is not None else 0,
            "context_tokens": self.context_tokens,
            "passage_tokens": self.passage_tokens,
            "delta_rank": self.delta_rank,
        }
        if completion is not None:
            data.update(
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                total_tokens=completion.total_tokens,
            )
        data["timings"] = dict(self.timings)
        return data

    # ------------------------------------------------------------------ generation

    def _finish_reason(self, completion_tokens: int, stopped: bool) -> str:
        return "stop" if stopped or completion_tokens < self.config.max_new_tokens else "length"

    def _completion(self, generation: Any, stop: Sequence[str] | None, seconds: float) -> Completion:
        self.timings["generate"] = seconds
        cleaner = StopSequenceFilter(stop)
        text = cleaner.clean(generation.text)
        reason = self._finish_reason(generation.completion_tokens, cleaner.stopped)
        return Completion(text, generation.prompt_tokens, generation.completion_tokens, reason)

    def generate(self, stop: Sequence[str] | None = None) -> Completion:
        """Generate the whole answer (blocking)."""
        start = time.perf_counter()
        (generation,) = self.runtime.generate_prompts([self.prompt], [self.delta], self.config)
        return self._completion(generation, stop, time.perf_counter() - start)

    async def agenerate(self, stop: Sequence[str] | None = None) -> Completion:
        """:meth:`generate` on a worker thread; the event loop stays free."""
        start = time.perf_counter()
        (generation,) = await self.runtime.agenerate_prompts([self.prompt], [self.delta], self.config)
        return self._completion(generation, stop, time.perf_counter() - start)

    def _stream_end(self, text: str, raw: str, cleaner: StopSequenceFilter, seconds: float) -> Completion:
        self.timings["generate"] = seconds
        tokenizer = self.runtime.tokenizer
        completion_tokens = min(count_tokens(tokenizer, raw), self.config.max_new_tokens)
        reason = self._finish_reason(completion_tokens, cleaner.stopped)
        return Completion(text, count_tokens(tokenizer, self.prompt), completion_tokens, reason)

    def stream(self, stop: Sequence[str] | None = None) -> Iterator[str | Completion]:
        """Yield the cleaned text pieces (``str``) as generated, then one :class:`Completion`.

        Generation stops as soon as a stop sequence appears; the pieces add up to the
        completion's text, which equals what :meth:`generate` returns.
        """
        cleaner = StopSequenceFilter(stop)
        text, raw = "", ""
        start = time.perf_counter()
        pieces = self.runtime.stream_prompt(self.prompt, self.delta, self.config)
        try:
            for piece in pieces:
                raw += piece
                out = cleaner.feed(piece)
                if out:
                    text += out
                    yield out
                if cleaner.stopped:
                    break
        finally:
            pieces.close()
        out = cleaner.finish()
        if out:
            text += out
            yield out
        yield self._stream_end(text, raw, cleaner, time.perf_counter() - start)

    async def astream(self, stop: Sequence[str] | None = None) -> AsyncIterator[str | Completion]:
        """Async :meth:`stream`: the model runs on a worker thread, pieces arrive on the loop."""
        cleaner = StopSequenceFilter(stop)
        text, raw = "", ""
        start = time.perf_counter()
        pieces = self.runtime.astream_prompt(self.prompt, self.delta, self.config)
        try:
            async for piece in pieces:
                raw += piece
                out = cleaner.feed(piece)
                if out:
                    text += out
                    yield out
                if cleaner.stopped:
                    break
        finally:
            await pieces.aclose()
        out = cleaner.finish()
        if out:
            text += out
            yield out
        yield self._stream_end(text, raw, cleaner, time.perf_counter() - start)


def _compressed(compressor: Any, question: str, texts: list[str]) -> list[str]:
    result = compressor.compress(question, texts)
    out = getattr(result, "texts", None)
    if not isinstance(out, (list, tuple)) or not all(isinstance(t, str) for t in out):
        raise TypeError("compressor.compress(query, documents) must return an object whose .texts is a list of strings")
    return list(out)


def prepare_request(
    runtime: ParametricRAG,
    messages: Sequence[Mapping[str, str]],
    documents: Sequence[str] | None,
    *,
    mode: str = "combine",
    config: GenerationConfig | None = None,
    question: str | None = None,
    prompt: str | None = None,
    keep_prompt: bool = False,
    compressor: Any | None = None,
    missing_translator: str | None = None,
) -> ServingRequest:
    """Render the prompt and compute the delta of one call (blocking: async callers use a thread).

    Args:
        runtime: the served :class:`ParametricRAG`.
        messages: the conversation as ``{"role", "content"}`` dicts (roles ``system``,
            ``user``, ``assistant``).
        documents: passage texts; ``None`` makes a plain chat turn over ``messages`` (or over
            ``prompt`` when given).  With documents (even ``[]``) the question is worded with
            the core QA template and ``mode`` decides where the passages go.
        mode: ``none`` ignores them, ``rag`` puts them in the prompt, ``dyprag`` turns them into
            deltas only, ``combine`` does both (``compressor`` shortens the prompt copy).
        config: decoding settings (default: the generator's).
        question: the question, when it is not the last user message (then every message is
            history in front of it).
        prompt: an already-rendered prompt, used instead of ``messages`` for plain turns and
            with ``keep_prompt``.
        keep_prompt: keep ``prompt`` / ``messages`` as they are and only add the deltas (for a
            framework whose own template already placed the context).
        compressor: any object with ``.compress(query, documents)`` returning ``.texts``.
        missing_translator: the error to raise when a delta mode finds no translator.
    """
    config = config or runtime.generator.config
    tokenizer = runtime.tokenizer
    history = [dict(m) for m in messages]
    if documents is None:  # a plain chat turn
        if prompt is None and not history:
            raise ValueError("a chat turn needs at least one message")
        return ServingRequest(runtime, prompt if prompt is not None else render_chat(tokenizer, history), config)

    mode = check_mode(mode)
    if isinstance(documents, str):
        raise ValueError("documents must be a list of strings, not one string")
    for i, text in enumerate(documents):
        if not isinstance(text, str):
            raise ValueError(f"documents[{i}] must be a string, got {type(text).__name__}")
    texts = [t for t in documents if t.strip()]
    request = ServingRequest(runtime, "", config, mode=mode, documents=len(texts))
    request.passage_tokens = sum(count_tokens(tokenizer, t) for t in texts)
    if mode in USES_DELTAS and texts:
        if runtime.translator is None:
            raise ValueError(missing_translator or f"mode {mode!r} needs a parameter translator; the runtime has none")
        start = time.perf_counter()
        request.delta = runtime.deltas_for(texts)
        request.timings["translate"] = time.perf_counter() - start
        request.delta_rank = request.delta.rank if request.delta is not None else 0

    if keep_prompt:  # the caller's prompt already holds whatever context it wants
        if prompt is None and not history:
            raise ValueError("keep_prompt needs the prompt or the messages to keep")
        request.prompt = prompt if prompt is not None else render_chat(tokenizer, history)
        return request

    if question is None:
        if not history or history[-1].get("role") != "user":
            raise ValueError("with documents, the last message must be the user message that asks the question")
        question, history = history[-1]["content"], history[:-1]
    context: list[str] = texts if mode in USES_CONTEXT else []
    if mode == "combine" and compressor is not None and texts:
        start = time.perf_counter()
        context = _compressed(compressor, question, texts)
        request.timings["compress"] = time.perf_counter() - start
    request.context_tokens = sum(count_tokens(tokenizer, t) for t in context if t.strip())
    turn = build_messages(question, context, runtime.generator.template)
    if turn[0]["role"] == "system" and history and history[0]["role"] == "system":
        turn = turn[1:]  # the conversation's own system message wins
    request.prompt = render_chat(tokenizer, history + turn)
    return request
