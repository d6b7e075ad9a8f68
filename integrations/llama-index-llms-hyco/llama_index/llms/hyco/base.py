"""DyPRAG as a LlamaIndex LLM: retrieved passages become LoRA deltas of a locally served model.

`HyCoLLM` serves a Hugging Face causal LM (default: the embedded SmolLM2-135M-Instruct) through
:class:`hyco_rag.dyprag.runtime.ParametricRAG`.  Passages reach a generation in one of two ways:

- per call: ``llm.complete(question, documents=[...])`` (also ``stream_complete``, ``chat``,
  ``stream_chat`` and their async versions, and ``mode=`` per call).  The deltas exist for that
  generation only;
- in a query engine: :class:`llama_index.postprocessor.hyco.DyPRAGNodePostprocessor` binds the
  retrieved nodes of a query with :func:`bind_documents`.  The binding lives in a
  :class:`contextvars.ContextVar` (so concurrent queries in other tasks or threads never see it)
  and is used only by a generation whose prompt contains that query's text.

Without passages it is a plain chat model.  With passages (even ``[]``) the question is worded
with the core QA template, as :meth:`ParametricRAG.answer` words it (the prompt the translator
was trained with).  Modes: ``none`` ignores the passages, ``rag`` puts them in the prompt,
``dyprag`` turns them into deltas only, ``combine`` does both (``compressor`` shortens the
prompt copy).

The model loads lazily on first use, on the auto-detected device, and is shared by every
`HyCoLLM` (and every LangChain ``ChatHyCo``) with the same model / translator / device, through
:func:`hyco_rag.dyprag.serving.served_runtime`.  Prompts, deltas, stop sequences and costs come
from :mod:`hyco_rag.dyprag.serving`; this module only translates LlamaIndex messages and nodes.  The async methods run the model in a
worker thread and never block the event loop; concurrent requests serialise on the model and
produce exactly what they would sequentially.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
    from hyco_rag.dyprag.runtime import ParametricRAG
    from hyco_rag.dyprag.serving import ServingRequest

logger = logging.getLogger(__name__)

__all__ = ["DocumentBinding", "HyCoLLM", "bind_documents", "current_binding"]

MODES = ("none", "rag", "dyprag", "combine")
PROMPT_STYLES = ("core", "synthesizer")
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CALL_KWARGS = frozenset({"documents", "mode"})


# --------------------------------------------------------------------------- per-query binding


@dataclass(frozen=True)
class DocumentBinding:
    """The passages of one query, for the generations that answer it.

    Attributes:
        query: the query text; a generation uses the binding only if its prompt contains it.
        documents: passage texts.
        mode: the mode for these generations (``None``: the LLM's own).
        prompt: ``"core"`` answers with the core QA prompt built from ``query`` and the passages
            (the synthesizer's prompt is replaced); ``"synthesizer"`` keeps the response
            synthesizer's prompt and only adds the deltas.
    """

    query: str
    documents: tuple[str, ...]
    mode: str | None = None
    prompt: str = "core"

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or not self.query.strip():
            raise ValueError("a document binding needs the non-empty query text it belongs to")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.prompt not in PROMPT_STYLES:
            raise ValueError(f"prompt must be one of {PROMPT_STYLES}, got {self.prompt!r}")

    def matches(self, text: str) -> bool:
        return self.query.strip() in text


_BINDING: contextvars.ContextVar[DocumentBinding | None] = contextvars.ContextVar("hyco_dyprag_documents", default=None)


def bind_documents(query: str, documents: Sequence[Any], *, mode: str | None = None, prompt: str = "core") -> contextvars.Token:
    """Bind ``documents`` to ``query`` in the current context (task / thread) and return the token.

    Later generations of a :class:`HyCoLLM` in this context whose prompt contains ``query`` use
    them.  A new binding replaces the previous one; ``_BINDING.reset(token)`` restores it.
    """
    binding = DocumentBinding(query, tuple(document_texts(documents)), mode, prompt)
    return _BINDING.set(binding)


def current_binding() -> DocumentBinding | None:
    """The binding visible in this context, if any."""
    return _BINDING.get()


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
            raise ValueError(f"HyCoLLM cannot render a {kind.value} message; it takes system, user and assistant messages (no tools)")
        for block in message.blocks:
            if not isinstance(block, TextBlock):
                raise ValueError(f"HyCoLLM takes text only; got a {type(block).__name__} in a {role} message")
        out.append({"role": role, "content": message.content or ""})
    return out


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

    Every response carries its cost in ``additional_kwargs`` (mode, passages injected, context
    and passage tokens, delta rank, prompt/completion tokens, timings) and OpenAI-style
    ``raw["usage"]``, which LlamaIndex's ``TokenCountingHandler`` reads.
    """

    model: str = Field(default=DEFAULT_MODEL, description="HF id, local folder, .gguf file or alias of the served causal LM.")
    translator: str | None = Field(default=None, description="Folder of a saved ParameterTranslator; None = the shipped one.")
    mode: str = Field(default="combine", description="Default mode: none, rag, dyprag or combine.")
    max_new_tokens: int = Field(default=64, ge=1, description="Most tokens generated per answer.")
    temperature: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="0 = greedy (deterministic); above 0 samples.")
    stop: list[str] | None = Field(default=None, description="Text at which an answer ends (not included), e.g. ['\\n'].")
    device: str | None = Field(default=None, description="Torch device; None picks CUDA when present, else CPU.")
    context_window: int | None = Field(default=None, description="Model window in tokens; None reads it from the model config.")
    compressor: Any | None = Field(default=None, exclude=True, description="Core compressor (.compress(query, documents).texts) for combine mode.")
    runtime: Any | None = Field(default=None, exclude=True, description="A ready ParametricRAG to serve instead of loading model/translator.")

    _window: int | None = PrivateAttr(default=None)

    @field_validator("mode")
    @classmethod
    def _check_mode(cls, value: str) -> str:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_objects(self) -> HyCoLLM:
        if self.compressor is not None and not callable(getattr(self.compressor, "compress", None)):
            raise ValueError(f"compressor must have .compress(query, documents), got {type(self.compressor).__name__}")
        if self.runtime is not None and not callable(getattr(self.runtime, "generate_prompts", None)):
            raise ValueError(f"runtime must be a hyco_rag ParametricRAG, got {type(self.runtime).__name__}")
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
            if self.runtime is not None:
                self._window = int(self.runtime.window)
            else:
                from transformers import AutoConfig

                from hyco_rag.models import resolve_causal_lm

                config = AutoConfig.from_pretrained(resolve_causal_lm(self.model))
                self._window = int(getattr(config, "max_position_embeddings", 0) or 2048)
        return self._window

    # ------------------------------------------------------------------ preparing a request

    def _served_runtime(self) -> tuple[ParametricRAG, str | None]:
        if self.runtime is not None:
            return self.runtime, None
        from hyco_rag.dyprag.serving import served_runtime

        served = served_runtime(self.model, self.translator, self.device)
        return served.runtime, served.missing_translator

    def _resolve(self, text: str, kwargs: dict[str, Any]) -> tuple[list[str] | None, str, DocumentBinding | None]:
        """Passages and mode of one call: explicit ``documents=`` first, else a matching binding.

        Runs in the caller's context (before any worker thread), where the binding is visible.
        """
        unknown = set(kwargs) - CALL_KWARGS
        if unknown:
            raise ValueError(f"HyCoLLM got unexpected keyword arguments {sorted(unknown)}; it takes {sorted(CALL_KWARGS)}")
        mode = kwargs.get("mode") or self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if kwargs.get("documents") is not None:
            return document_texts(kwargs["documents"]), mode, None
        binding = _BINDING.get()
        if binding is not None and binding.matches(text):
            return list(binding.documents), kwargs.get("mode") or binding.mode or self.mode, binding
        return None, mode, None

    def _prepare(
        self,
        messages: list[dict[str, str]] | None,
        raw_prompt: str | None,
        documents: list[str] | None,
        mode: str,
        binding: DocumentBinding | None,
    ) -> ServingRequest:
        """The core request of one call (blocking: async callers run it in a thread)."""
        from hyco_rag.dyprag.serving import prepare_request, sampling_config

        runtime, missing_translator = self._served_runtime()
        if documents is not None and binding is None and raw_prompt is not None:
            raise ValueError("documents need the question itself: call complete(question, formatted=False)")
        if binding is not None and binding.prompt == "core":
            messages = []  # the core QA prompt built from the bound query replaces the synthesizer's
        return prepare_request(
            runtime,
            messages or [],
            documents,
            mode=mode,
            config=sampling_config(self.max_new_tokens, self.temperature),
            question=binding.query if binding is not None else None,
            prompt=raw_prompt,
            keep_prompt=binding is not None and binding.prompt == "synthesizer",
            compressor=self.compressor,
            missing_translator=missing_translator,
        )

    def _completion_inputs(self, prompt: str, formatted: bool) -> tuple[list[dict[str, str]] | None, str | None]:
        if formatted:
            return None, prompt
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": prompt}], None

    # ------------------------------------------------------------------ generation

    def _generate(self, request: ServingRequest) -> tuple[str, dict[str, Any]]:
        completion = request.generate(self.stop)
        return completion.text, request.stats(completion)

    async def _agenerate(self, request: ServingRequest) -> tuple[str, dict[str, Any]]:
        completion = await request.agenerate(self.stop)
        return completion.text, request.stats(completion)

    def _stream(self, request: ServingRequest) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
        """Yield ``(cumulative, delta, None)`` per piece, then ``(text, "", stats)`` once."""
        text = ""
        for item in request.stream(self.stop):
            if isinstance(item, str):
                text += item
                yield text, item, None
            else:
                yield item.text, "", request.stats(item)

    async def _astream(self, request: ServingRequest) -> AsyncIterator[tuple[str, str, dict[str, Any] | None]]:
        text = ""
        async for item in request.astream(self.stop):
            if isinstance(item, str):
                text += item
                yield text, item, None
            else:
                yield item.text, "", request.stats(item)

    @staticmethod
    def _raw(stats: dict[str, Any]) -> dict[str, Any]:
        return {"usage": {k: stats[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}}

    # ------------------------------------------------------------------ completion API

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        documents, mode, binding = self._resolve(prompt, kwargs)
        messages, raw_prompt = self._completion_inputs(prompt, formatted)
        request = self._prepare(messages, raw_prompt, documents, mode, binding)
        text, stats = self._generate(request)
        return CompletionResponse(text=text, additional_kwargs=stats, raw=self._raw(stats))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        documents, mode, binding = self._resolve(prompt, kwargs)
        messages, raw_prompt = self._completion_inputs(prompt, formatted)
        request = self._prepare(messages, raw_prompt, documents, mode, binding)

        def gen() -> CompletionResponseGen:
            for text, delta, stats in self._stream(request):
                if stats is None:
                    yield CompletionResponse(text=text, delta=delta)
                else:
                    yield CompletionResponse(text=text, delta="", additional_kwargs=stats, raw=self._raw(stats))

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        documents, mode, binding = self._resolve(prompt, kwargs)
        messages, raw_prompt = self._completion_inputs(prompt, formatted)
        request = await asyncio.to_thread(self._prepare, messages, raw_prompt, documents, mode, binding)
        text, stats = await self._agenerate(request)
        return CompletionResponse(text=text, additional_kwargs=stats, raw=self._raw(stats))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        documents, mode, binding = self._resolve(prompt, kwargs)
        messages, raw_prompt = self._completion_inputs(prompt, formatted)
        request = await asyncio.to_thread(self._prepare, messages, raw_prompt, documents, mode, binding)

        async def gen() -> CompletionResponseAsyncGen:
            async for text, delta, stats in self._astream(request):
                if stats is None:
                    yield CompletionResponse(text=text, delta=delta)
                else:
                    yield CompletionResponse(text=text, delta="", additional_kwargs=stats, raw=self._raw(stats))

        return gen()

    # ------------------------------------------------------------------ chat API

    def _chat_request_inputs(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        dicts = _chat_dicts(messages)
        documents, mode, binding = self._resolve("\n".join(m["content"] for m in dicts), kwargs)
        return dicts, None, documents, mode, binding

    @staticmethod
    def _assistant(text: str) -> ChatMessage:
        return ChatMessage(role=MessageRole.ASSISTANT, content=text)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request = self._prepare(*self._chat_request_inputs(messages, kwargs))
        text, stats = self._generate(request)
        return ChatResponse(message=self._assistant(text), additional_kwargs=stats, raw=self._raw(stats))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        request = self._prepare(*self._chat_request_inputs(messages, kwargs))

        def gen() -> ChatResponseGen:
            for text, delta, stats in self._stream(request):
                if stats is None:
                    yield ChatResponse(message=self._assistant(text), delta=delta)
                else:
                    yield ChatResponse(message=self._assistant(text), delta="", additional_kwargs=stats, raw=self._raw(stats))

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        request = await asyncio.to_thread(self._prepare, *self._chat_request_inputs(messages, kwargs))
        text, stats = await self._agenerate(request)
        return ChatResponse(message=self._assistant(text), additional_kwargs=stats, raw=self._raw(stats))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        request = await asyncio.to_thread(self._prepare, *self._chat_request_inputs(messages, kwargs))

        async def gen() -> ChatResponseAsyncGen:
            async for text, delta, stats in self._astream(request):
                if stats is None:
                    yield ChatResponse(message=self._assistant(text), delta=delta)
                else:
                    yield ChatResponse(message=self._assistant(text), delta="", additional_kwargs=stats, raw=self._raw(stats))

        return gen()
