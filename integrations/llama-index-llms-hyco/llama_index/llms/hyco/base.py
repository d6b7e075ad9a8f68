"""DyPRAG as a LlamaIndex LLM: retrieved passages become LoRA deltas of a locally served model.

`HyCoLLM` is a thin client of the serving engine (:class:`hyco_rag.engine.Engine`), which serves
a Hugging Face causal LM (default: the embedded SmolLM2-135M-Instruct).  Passages reach a
generation in one of two ways:

- per call: ``llm.complete(question, documents=[...])`` (also ``stream_complete``, ``chat``,
  ``stream_chat`` and their async versions, and ``mode=`` per call).  The deltas exist for that
  generation only;
- in a query engine: :class:`llama_index.postprocessor.hyco.DyPRAGNodePostprocessor` binds the
  retrieved nodes of a query with :func:`bind_documents`.  The binding lives in a
  :class:`contextvars.ContextVar` (so concurrent queries in other tasks or threads never see it),
  is used only by a generation whose prompt names that exact query (see
  :meth:`DocumentBinding.matches`), and ends with the query: every LlamaIndex query starts
  without a binding and restores the previous one when it ends, so a later call on a reused
  thread never gets an old query's passages.

Without passages it is a plain chat model.  With passages (even ``[]``) the question is worded
with the core QA template, as :meth:`Engine.answer` words it (the prompt the translator was
trained with).  Modes (:class:`hyco_rag.engine.Mode`, one spelling everywhere): ``none``
ignores the passages, ``rag`` puts them in the prompt, ``hyco`` puts them in compressed,
``dyprag`` turns them into deltas only, ``combine`` does both, ``combine-hyco`` does both with
the prompt copy compressed (``compressor``, else the engine's HyCo compressor), ``hybrid`` puts
the engine's hybrid-adapter soft tokens then the compressed text in the prompt (one budget, the
soft tokens count), ``combine-hybrid`` adds the deltas to that.  The soft tokens need the core
QA prompt: a binding with ``prompt="synthesizer"`` cannot serve the hybrid modes.

The default mode is ``combine``, which needs passages.  A generation in a passage-using mode
(``hyco``, ``dyprag``, ``combine``, ``combine-hyco``, ``hybrid``, ``combine-hybrid``) that gets
none (no ``documents=``, no binding: typically a query engine without
``DyPRAGNodePostprocessor``) answers as a plain chat model over its prompt and says so once per
`HyCoLLM` with a :class:`PassagesMissingWarning` (and in ``additional_kwargs["mode"]``, which is
then ``None``), instead of silently pretending to be DyPRAG.

The engine is resolved on first use through :func:`hyco_rag.engine.get_engine` (loaded once per
model / translator / device, shared by every `HyCoLLM` and LangChain ``ChatHyCo``); importing
this module does not import torch.  Concurrent requests (async, threads) are batched by the
engine and give what they would sequentially; closing a stream or cancelling an async call frees
its slot.  This module only translates LlamaIndex messages and nodes.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import re
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyco_rag.engine.modes import MODE_NAMES, Mode
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator, model_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore

if TYPE_CHECKING:
    from hyco_rag.engine import Completion, Engine, PreparedRequest, SamplingParams

logger = logging.getLogger(__name__)

__all__ = [
    "DocumentBinding",
    "HyCoLLM",
    "PassagesMissingWarning",
    "bind_documents",
    "current_binding",
    "documents_bound",
    "release_binding",
]

MODES = MODE_NAMES
PROMPT_STYLES = ("core", "synthesizer")
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CALL_KWARGS = frozenset({"documents", "mode"})


class PassagesMissingWarning(UserWarning):
    """A HyCoLLM in a passage-using mode got no passages and answered as a plain chat model."""


# --------------------------------------------------------------------------- per-query binding


def _normalise(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class DocumentBinding:
    """The passages of one query, for the generations that answer it.

    Attributes:
        query: the query text; a generation uses the binding only if its prompt names exactly
            this query (see :meth:`matches`).
        documents: passage texts.
        mode: the mode for these generations (``None``: the LLM's own).
        prompt: ``"core"`` answers with the core QA prompt built from ``query`` and the passages
            (the synthesizer's prompt is replaced); ``"synthesizer"`` keeps the response
            synthesizer's prompt and only adds the deltas (not with the hybrid modes, whose
            soft tokens go into the core prompt).
    """

    query: str
    documents: tuple[str, ...]
    mode: str | None = None
    prompt: str = "core"

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or not self.query.strip():
            raise ValueError("a document binding needs the non-empty query text it belongs to")
        if self.mode is not None:
            object.__setattr__(self, "mode", Mode.parse(self.mode).value)
        if self.prompt not in PROMPT_STYLES:
            raise ValueError(f"prompt must be one of {PROMPT_STYLES}, got {self.prompt!r}")
        if self.mode is not None:
            check_prompt_style(Mode.parse(self.mode), self.prompt)

    def matches(self, text: str) -> bool:
        """Whether ``text`` (a prompt, or a chat's messages) asks exactly this query.

        It does when the query is the whole text, or a whole line of it, optionally after a
        label such as LlamaIndex's ``Query:`` (whitespace runs count as one space).  A prompt
        that merely contains the query inside a longer question (``"<query> Answer in French."``)
        does not match: that is another query.
        """
        query = _normalise(self.query)
        if _normalise(text) == query:
            return True
        label = r"(?:[^\S\n]*[\w ()'-]{1,40}:)?"
        pattern = r"(?:^|\n)" + label + r"\s*" + r"\s+".join(map(re.escape, query.split())) + r"[^\S\n]*(?:\n|$)"
        return re.search(pattern, text) is not None


def check_prompt_style(mode: Mode, prompt: str) -> None:
    """Refuse ``prompt="synthesizer"`` with a mode that places soft tokens: they are written into
    the core QA prompt, and the synthesizer's prompt is kept as it is (``keep_prompt``)."""
    if prompt == "synthesizer" and mode.uses_soft_tokens:
        raise ValueError(
            f"mode {mode.value!r} places the hybrid adapter's soft tokens in the core QA prompt, so it cannot keep the "
            "synthesizer's prompt (prompt='synthesizer'); use prompt='core'"
        )


_BINDING: contextvars.ContextVar[DocumentBinding | None] = contextvars.ContextVar("hyco_dyprag_documents", default=None)
#: Tokens of the bindings in force when each running query (innermost last) of this context started.
_QUERY_SCOPES: contextvars.ContextVar[tuple[contextvars.Token[DocumentBinding | None], ...]] = contextvars.ContextVar(
    "hyco_dyprag_query_scopes", default=()
)


def bind_documents(
    query: str, documents: Sequence[Any], *, mode: str | None = None, prompt: str = "core"
) -> contextvars.Token[DocumentBinding | None]:
    """Bind ``documents`` to ``query`` in the current context (task / thread) and return the token.

    Later generations of a :class:`HyCoLLM` in this context whose prompt asks exactly ``query``
    use them.  Inside a LlamaIndex query (what ``DyPRAGNodePostprocessor`` does) the binding ends
    with the query.  Outside one, end it yourself with :func:`release_binding` (or use
    :func:`documents_bound`), or it stays in force in this context.
    """
    binding = DocumentBinding(query, tuple(document_texts(documents)), mode, prompt)
    _install_query_scopes()
    return _BINDING.set(binding)


def release_binding(token: contextvars.Token[DocumentBinding | None]) -> None:
    """Restore the binding that :func:`bind_documents` replaced (``token`` is what it returned)."""
    _BINDING.reset(token)


class documents_bound:
    """``with documents_bound(query, documents, mode=..., prompt=...):`` binds for the block only."""

    def __init__(self, query: str, documents: Sequence[Any], *, mode: str | None = None, prompt: str = "core") -> None:
        self._args = (query, documents, mode, prompt)
        self._token: contextvars.Token[DocumentBinding | None] | None = None

    def __enter__(self) -> DocumentBinding:
        query, documents, mode, prompt = self._args
        self._token = bind_documents(query, documents, mode=mode, prompt=prompt)
        binding = _BINDING.get()
        assert binding is not None
        return binding

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            release_binding(self._token)
            self._token = None


def current_binding() -> DocumentBinding | None:
    """The binding visible in this context, if any."""
    return _BINDING.get()


def _query_started() -> None:
    """A LlamaIndex query starts in this context: it begins without a binding."""
    token = _BINDING.set(None)
    _QUERY_SCOPES.set((*_QUERY_SCOPES.get(), token))


def _query_ended(response: Any = None) -> None:
    """The innermost query of this context ended: the binding in force before it comes back.

    A streamed response (``streaming=True``) generates lazily, after the query returned: its
    token generator is wrapped so that it runs with the query's binding (in a copy of this
    context), while this context gets the previous binding back at once.
    """
    if _BINDING.get() is not None and response is not None:
        _carry_binding(response, contextvars.copy_context())
    scopes = _QUERY_SCOPES.get()
    if not scopes:  # started before the scopes were installed: just end this query's binding
        _BINDING.set(None)
        return
    *rest, token = scopes
    _QUERY_SCOPES.set(tuple(rest))
    try:
        _BINDING.reset(token)
    except ValueError:  # the query started in another context (the token belongs there)
        _BINDING.set(token.old_value if token.old_value is not contextvars.Token.MISSING else None)


def _carry_binding(response: Any, context: contextvars.Context) -> None:
    """Make a streamed response's lazy generation run in ``context`` (which holds its binding)."""
    generator = getattr(response, "response_gen", None)
    if generator is None or isinstance(generator, str):
        return
    if hasattr(generator, "__anext__"):
        response.response_gen = _in_context_async(generator, context)
    elif hasattr(generator, "__next__"):
        response.response_gen = _in_context(generator, context)


def _in_context(generator: Iterator[Any], context: contextvars.Context) -> Iterator[Any]:
    try:
        while True:
            try:
                item = context.run(next, generator)
            except StopIteration:
                return
            yield item
    finally:
        close = getattr(generator, "close", None)
        if callable(close):
            context.run(close)  # a consumer that stopped early cancels the generation


async def _in_context_async(generator: AsyncIterator[Any], context: contextvars.Context) -> AsyncIterator[Any]:
    # A task runs in a copy of the context current where it is created: create it inside ``context``.
    async def step() -> Any:
        return await generator.__anext__()

    try:
        while True:
            try:
                item = await context.run(asyncio.ensure_future, step())
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(generator, "aclose", None)
        if callable(aclose):

            async def close() -> None:
                await aclose()

            await context.run(asyncio.ensure_future, close())


_SCOPES_INSTALLED = False
_SCOPES_LOCK = threading.Lock()


def _install_query_scopes() -> None:
    """Scope bindings to LlamaIndex queries: a handler of the root instrumentation dispatcher
    sees every ``QueryStartEvent`` / ``QueryEndEvent``, dispatched synchronously in the query's
    own context (thread or task), so it can set and reset the context variable there."""
    global _SCOPES_INSTALLED
    if _SCOPES_INSTALLED:
        return
    with _SCOPES_LOCK:
        if _SCOPES_INSTALLED:
            return
        from llama_index.core.instrumentation import get_dispatcher
        from llama_index.core.instrumentation.event_handlers import BaseEventHandler
        from llama_index.core.instrumentation.events.query import QueryEndEvent, QueryStartEvent

        class _QueryScopes(BaseEventHandler):
            @classmethod
            def class_name(cls) -> str:
                return "HyCoQueryScopes"

            def handle(self, event: Any, **kwargs: Any) -> None:
                if isinstance(event, QueryStartEvent):
                    _query_started()
                elif isinstance(event, QueryEndEvent):
                    _query_ended(event.response)

        get_dispatcher().add_event_handler(_QueryScopes())
        _SCOPES_INSTALLED = True


# --------------------------------------------------------------------------- helpers


def document_texts(documents: Any) -> list[str]:
    """Strings, LlamaIndex nodes or ``NodeWithScore`` -> passage texts (in order, no metadata)."""
    if isinstance(documents, (str, BaseNode, NodeWithScore)):
        raise ValueError("documents must be a list of strings or nodes, not a single one")
    try:
        items = list(documents)
    except TypeError as error:
        raise ValueError(f"documents must be a list of strings or nodes, got {type(documents).__name__}") from error
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, NodeWithScore):
            item = item.node
        if isinstance(item, BaseNode):
            texts.append(item.get_content(metadata_mode=MetadataMode.NONE))
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise ValueError(f"documents[{i}] must be a string or a node, got {type(item).__name__}")
    return texts


_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
}


def _chat_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    out = []
    for message in messages:
        kind = MessageRole(message.role)
        role = _ROLES.get(kind)
        if role is None:
            raise ValueError(
                f"HyCoLLM cannot render a {kind.value} message; it takes system, user and assistant messages (no tools)"
            )
        for block in message.blocks:
            if not isinstance(block, TextBlock):
                raise ValueError(f"HyCoLLM takes text only; got a {type(block).__name__} in a {role} message")
        out.append({"role": role, "content": message.content or ""})
    return out


def _is_engine(value: Any) -> bool:
    """Whether ``value`` is a :class:`hyco_rag.engine.Engine` (without importing torch)."""
    module = sys.modules.get("hyco_rag.engine.engine")
    return module is not None and isinstance(value, module.Engine)


def _as_core_compressor(compressor: Any) -> Any:
    """``compressor`` as the engine's ``.compress(query, texts, rate=|target_tokens=) -> .texts``:
    as it is when it takes the budget keywords, else with the budget dropped."""
    try:
        parameters = list(inspect.signature(compressor.compress).parameters.values())
    except (TypeError, ValueError):
        return compressor
    names = {p.name for p in parameters}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters) or {"rate", "target_tokens"} <= names:
        return compressor
    return _NoBudgetAdapter(compressor)


class _NoBudgetAdapter:
    def __init__(self, compressor: Any) -> None:
        self.compressor = compressor

    def compress(self, query: str, texts: list[str], **budget: Any) -> Any:
        return self.compressor.compress(query, texts)


@dataclass
class _Call:
    """One checked call, ready to prepare on the engine."""

    messages: list[dict[str, str]]
    documents: list[str] | None
    mode: Mode
    question: str | None
    prompt: str | None
    keep_prompt: bool
    compressor: Any | None

    def _kwargs(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "question": self.question,
            "prompt": self.prompt,
            "keep_prompt": self.keep_prompt,
            "compressor": self.compressor,
        }

    def prepare(self, engine: Engine) -> PreparedRequest:
        return engine.prepare(self.messages, self.documents, **self._kwargs())

    async def aprepare(self, engine: Engine) -> PreparedRequest:
        return await engine.aprepare(self.messages, self.documents, **self._kwargs())


# --------------------------------------------------------------------------- the LLM


class HyCoLLM(CustomLLM):
    """A local LLM that absorbs retrieved passages as DyPRAG LoRA deltas.

    Example:
        ```python
        from llama_index.llms.hyco import HyCoLLM
        from llama_index.postprocessor.hyco import DyPRAGNodePostprocessor

        llm = HyCoLLM(mode="dyprag", max_new_tokens=32)  # nothing is loaded yet
        llm.complete("Who won Super Bowl 50?", documents=["Super Bowl 50 was ...", ...])

        engine = index.as_query_engine(llm=llm, node_postprocessors=[DyPRAGNodePostprocessor(llm=llm)])
        engine.query("Who won Super Bowl 50?")
        ```

    Every response carries its cost in ``additional_kwargs`` (``PreparedRequest.stats``: mode,
    passages injected, context, passage and soft tokens, delta rank, prompt/completion tokens,
    timings, plus ``finish_reason``) and OpenAI-style ``raw["usage"]``, which LlamaIndex's
    ``TokenCountingHandler`` reads.
    """

    model: str = Field(default=DEFAULT_MODEL, description="HF id, local folder, .gguf file or alias of the served causal LM.")
    translator: str | None = Field(default=None, description="Folder of a saved ParameterTranslator; None = the shipped one.")
    mode: str = Field(
        default="combine",
        description="Default mode: none, rag, hyco, dyprag, combine, combine-hyco, hybrid or combine-hybrid.",
    )
    max_new_tokens: int = Field(default=64, ge=1, description="Most tokens generated per answer.")
    temperature: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="0 = greedy (deterministic); above 0 samples.")
    stop: list[str] | None = Field(default=None, description="Text at which an answer ends (not included), e.g. ['\\n'].")
    device: str | None = Field(default=None, description="Torch device; None picks CUDA when present, else CPU.")
    context_window: int | None = Field(default=None, description="Model window in tokens; None reads it from the model config.")
    compressor: Any | None = Field(
        default=None,
        exclude=True,
        description="Core compressor (.compress(query, documents).texts) for the compressing (hyco, hybrid) modes.",
    )
    engine: Any | None = Field(
        default=None, exclude=True, description="A ready hyco_rag.engine.Engine to serve instead of loading model/translator."
    )

    _window: int | None = PrivateAttr(default=None)
    _warned_no_passages: bool = PrivateAttr(default=False)

    @field_validator("mode")
    @classmethod
    def _check_mode(cls, value: str) -> str:
        return Mode.parse(value).value

    @model_validator(mode="after")
    def _check_objects(self) -> HyCoLLM:
        if self.compressor is not None and not callable(getattr(self.compressor, "compress", None)):
            raise ValueError(f"compressor must have .compress(query, documents), got {type(self.compressor).__name__}")
        if self.engine is not None and not _is_engine(self.engine):
            raise ValueError(f"engine must be a hyco_rag.engine.Engine, got {type(self.engine).__name__}")
        return self

    @classmethod
    def class_name(cls) -> str:
        return "HyCoLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self._context_window(),
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=self.model,
        )

    def _context_window(self) -> int:
        """The model's window, read from its config (no weights loaded)."""
        if self.context_window is not None:
            return self.context_window
        if self._window is None:
            if self.engine is not None:
                self._window = int(self.engine.window)
            else:
                from transformers import AutoConfig

                from hyco_rag.models import resolve_causal_lm

                config = AutoConfig.from_pretrained(resolve_causal_lm(self.model))
                self._window = int(getattr(config, "max_position_embeddings", 0) or 2048)
        return self._window

    # ------------------------------------------------------------------ preparing a request

    def _engine(self) -> Engine:
        """The served engine (blocking the first time the model loads)."""
        if self.engine is not None:
            return self.engine  # type: ignore[no-any-return]
        from hyco_rag.engine import get_engine

        return get_engine(self.model, self.translator, self.device)

    def _sampling(self) -> SamplingParams:
        from hyco_rag.engine.sampling import SamplingParams

        return SamplingParams(max_tokens=self.max_new_tokens, temperature=self.temperature, stop=tuple(self.stop or ()))

    def _resolve(self, text: str, kwargs: dict[str, Any]) -> tuple[list[str] | None, Mode, DocumentBinding | None]:
        """Passages and mode of one call: explicit ``documents=`` first, else a matching binding.

        Runs in the caller's context (before any worker thread), where the binding is visible.
        """
        unknown = set(kwargs) - CALL_KWARGS
        if unknown:
            raise ValueError(f"HyCoLLM got unexpected keyword arguments {sorted(unknown)}; it takes {sorted(CALL_KWARGS)}")
        mode = Mode.parse(kwargs.get("mode") or self.mode)
        if kwargs.get("documents") is not None:
            return document_texts(kwargs["documents"]), mode, None
        binding = _BINDING.get()
        if binding is not None and binding.matches(text):
            return list(binding.documents), Mode.parse(kwargs.get("mode") or binding.mode or self.mode), binding
        if (mode.uses_deltas or mode.compresses) and not self._warned_no_passages:
            self._warned_no_passages = True
            warnings.warn(
                f"HyCoLLM(mode={mode.value!r}) got no passages (no documents= and no DyPRAGNodePostprocessor binding for "
                "this prompt), so it answers as a plain chat model: no deltas, no compression. In a query engine add "
                "node_postprocessors=[DyPRAGNodePostprocessor(llm)]; for plain chat use mode='rag'. (Said once per HyCoLLM.)",
                PassagesMissingWarning,
                stacklevel=4,
            )
        return None, mode, None

    def _call(
        self,
        messages: list[dict[str, str]] | None,
        raw_prompt: str | None,
        documents: list[str] | None,
        mode: Mode,
        binding: DocumentBinding | None,
    ) -> _Call:
        if documents is not None and binding is None and raw_prompt is not None:
            raise ValueError("documents need the question itself: call complete(question, formatted=False)")
        if binding is not None:
            check_prompt_style(mode, binding.prompt)  # the mode may come from this call or the LLM
        if binding is not None and binding.prompt == "core":
            messages, raw_prompt = [], None  # the core QA prompt built from the bound query replaces the synthesizer's
        compressor = _as_core_compressor(self.compressor) if self.compressor is not None and mode.compresses else None
        return _Call(
            messages or [],
            documents,
            mode,
            question=binding.query if binding is not None and binding.prompt == "core" else None,
            prompt=raw_prompt,
            keep_prompt=binding is not None and binding.prompt == "synthesizer",
            compressor=compressor,
        )

    def _prepare(
        self,
        messages: list[dict[str, str]] | None,
        raw_prompt: str | None,
        documents: list[str] | None,
        mode: Mode | str,
        binding: DocumentBinding | None,
    ) -> PreparedRequest:
        """The engine request of one call (blocking: async callers use :meth:`_aprepare`)."""
        return self._call(messages, raw_prompt, documents, Mode.parse(mode), binding).prepare(self._engine())

    async def _aprepare(self, *args: Any) -> tuple[Engine, PreparedRequest]:
        call = self._call(*args)
        engine = await asyncio.to_thread(self._engine)  # the first call may load the model
        return engine, await call.aprepare(engine)

    def _completion_inputs(self, prompt: str, formatted: bool) -> tuple[list[dict[str, str]] | None, str | None]:
        if formatted:
            return None, prompt
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": prompt}], None

    # ------------------------------------------------------------------ generation

    @staticmethod
    def _stats(request: PreparedRequest, completion: Completion) -> dict[str, Any]:
        return {**request.stats(completion), "finish_reason": completion.finish_reason}

    def _generate(self, engine: Engine, request: PreparedRequest) -> tuple[str, dict[str, Any]]:
        completion = engine.generate(request, self._sampling())
        return completion.text, self._stats(request, completion)

    async def _agenerate(self, engine: Engine, request: PreparedRequest) -> tuple[str, dict[str, Any]]:
        completion = await engine.agenerate(request, self._sampling())
        return completion.text, self._stats(request, completion)

    def _stream(self, engine: Engine, request: PreparedRequest) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
        """Yield ``(cumulative, delta, None)`` per piece, then ``(text, "", stats)`` once.

        Closing it early (or abandoning it) cancels the request and frees its engine slot."""
        items = engine.stream(request, self._sampling())
        text = ""
        try:
            for item in items:
                if isinstance(item, str):
                    text += item
                    yield text, item, None
                else:
                    yield item.text, "", self._stats(request, item)
        finally:
            close = getattr(items, "close", None)
            if callable(close):
                close()

    async def _astream(self, engine: Engine, request: PreparedRequest) -> AsyncIterator[tuple[str, str, dict[str, Any] | None]]:
        items = engine.astream(request, self._sampling())
        text = ""
        try:
            async for item in items:
                if isinstance(item, str):
                    text += item
                    yield text, item, None
                else:
                    yield item.text, "", self._stats(request, item)
        finally:
            await items.aclose()  # type: ignore[attr-defined]

    @staticmethod
    def _raw(stats: dict[str, Any]) -> dict[str, Any]:
        return {"usage": {k: stats[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}}

    # ------------------------------------------------------------------ completion API

    def _complete_request(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> tuple[Engine, PreparedRequest]:
        documents, mode, binding = self._resolve(prompt, kwargs)
        messages, raw_prompt = self._completion_inputs(prompt, formatted)
        engine = self._engine()
        return engine, self._call(messages, raw_prompt, documents, mode, binding).prepare(engine)

    async def _acomplete_request(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> tuple[Engine, PreparedRequest]:
        documents, mode, binding = self._resolve(prompt, kwargs)
        messages, raw_prompt = self._completion_inputs(prompt, formatted)
        return await self._aprepare(messages, raw_prompt, documents, mode, binding)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        engine, request = self._complete_request(prompt, formatted, kwargs)
        text, stats = self._generate(engine, request)
        return CompletionResponse(text=text, additional_kwargs=stats, raw=self._raw(stats))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        engine, request = self._complete_request(prompt, formatted, kwargs)

        def gen() -> CompletionResponseGen:
            for text, delta, stats in self._stream(engine, request):
                if stats is None:
                    yield CompletionResponse(text=text, delta=delta)
                else:
                    yield CompletionResponse(text=text, delta="", additional_kwargs=stats, raw=self._raw(stats))

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        engine, request = await self._acomplete_request(prompt, formatted, kwargs)
        text, stats = await self._agenerate(engine, request)
        return CompletionResponse(text=text, additional_kwargs=stats, raw=self._raw(stats))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        engine, request = await self._acomplete_request(prompt, formatted, kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            async for text, delta, stats in self._astream(engine, request):
                if stats is None:
                    yield CompletionResponse(text=text, delta=delta)
                else:
                    yield CompletionResponse(text=text, delta="", additional_kwargs=stats, raw=self._raw(stats))

        return gen()

    # ------------------------------------------------------------------ chat API

    def _chat_inputs(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        dicts = _chat_dicts(messages)
        documents, mode, binding = self._resolve("\n".join(m["content"] for m in dicts), kwargs)
        return dicts, None, documents, mode, binding

    def _chat_request(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> tuple[Engine, PreparedRequest]:
        call = self._call(*self._chat_inputs(messages, kwargs))
        engine = self._engine()
        return engine, call.prepare(engine)

    @staticmethod
    def _assistant(text: str) -> ChatMessage:
        return ChatMessage(role=MessageRole.ASSISTANT, content=text)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        engine, request = self._chat_request(messages, kwargs)
        text, stats = self._generate(engine, request)
        return ChatResponse(message=self._assistant(text), additional_kwargs=stats, raw=self._raw(stats))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        engine, request = self._chat_request(messages, kwargs)

        def gen() -> ChatResponseGen:
            for text, delta, stats in self._stream(engine, request):
                if stats is None:
                    yield ChatResponse(message=self._assistant(text), delta=delta)
                else:
                    yield ChatResponse(message=self._assistant(text), delta="", additional_kwargs=stats, raw=self._raw(stats))

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        engine, request = await self._aprepare(*self._chat_inputs(messages, kwargs))
        text, stats = await self._agenerate(engine, request)
        return ChatResponse(message=self._assistant(text), additional_kwargs=stats, raw=self._raw(stats))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        engine, request = await self._aprepare(*self._chat_inputs(messages, kwargs))

        async def gen() -> ChatResponseAsyncGen:
            async for text, delta, stats in self._astream(engine, request):
                if stats is None:
                    yield ChatResponse(message=self._assistant(text), delta=delta)
                else:
                    yield ChatResponse(message=self._assistant(text), delta="", additional_kwargs=stats, raw=self._raw(stats))

        return gen()
