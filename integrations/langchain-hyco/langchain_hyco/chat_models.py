"""DyPRAG as a LangChain chat model: retrieved documents become LoRA deltas of the served model.

`ChatHyCo` is a thin client of the serving engine (:class:`hyco_rag.engine.Engine`), which
serves a local Hugging Face causal LM (default: the embedded SmolLM2-135M-Instruct).  Documents
reach it per call, so the deltas of one request never touch another:

- as an invoke kwarg: ``chat.invoke("question", documents=[doc, ...])`` (also ``.bind``,
  ``.stream``, ``.ainvoke``, ``.astream``);
- in ``additional_kwargs["documents"]`` of the last ``HumanMessage`` (what
  :meth:`ChatHyCo.with_documents` produces, so an LCEL chain needs no prompt step);
- through :meth:`ChatHyCo.with_documents`, a runnable over ``{"question", "documents"}``, or
  with a retriever: ``chat.with_documents(retriever)`` answers a plain question string.

Without documents (``documents=None``) it is a plain chat model over the whole conversation.
With documents (even ``[]``), the last human message is the question and is worded with the
core QA template, exactly as :meth:`Engine.answer` words it (the prompt the translator was
trained with); system messages and earlier turns are kept in front of it.  What happens to the
passages depends on ``mode`` (:class:`hyco_rag.engine.Mode`, one spelling everywhere):
``none`` ignores them, ``rag`` puts them in the prompt, ``hyco`` puts them in compressed,
``dyprag`` turns them into deltas only, ``combine`` does both, ``combine-hyco`` does both with
the prompt copy compressed (by ``compressor`` when given, else the engine's HyCo compressor),
``hybrid`` puts the engine's hybrid-adapter soft tokens then the compressed text in the prompt
(one budget, the soft tokens count), and ``combine-hybrid`` adds the deltas to that.

The engine is resolved on first use through :func:`hyco_rag.engine.get_engine` (loaded once per
model / translator / device and shared by every `ChatHyCo` and LlamaIndex ``HyCoLLM``), so
building many `ChatHyCo` objects costs nothing and importing this module does not import torch.
Concurrent calls are batched by the engine; stop sequences end generation in the engine; closing
a stream or cancelling an async call frees the request's slot.  This module only translates
LangChain messages, documents and chunks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from pydantic import ConfigDict, Field, field_validator, model_validator
from typing_extensions import Self

from hyco_rag.engine.modes import MODE_NAMES, Mode

if TYPE_CHECKING:
    from hyco_rag.engine import Completion, Engine, PreparedRequest, SamplingParams

logger = logging.getLogger(__name__)

__all__ = ["ChatHyCo"]

#: The engine's modes (:data:`hyco_rag.engine.MODE_NAMES`; that module imports no torch).
MODES = MODE_NAMES
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
#: Keys of ``additional_kwargs`` of the last human message that carry its documents.
DOCUMENTS_KEY = "documents"
#: Per-call keyword arguments `ChatHyCo` understands; anything else is a mistake we name.
CALL_KWARGS = frozenset({"documents", "mode", "model", "max_tokens", "temperature"})

# --------------------------------------------------------------------------- messages


def _text_of(message: BaseMessage) -> str:
    """The text of a message; non-text content blocks are refused (no multimodal support)."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            raise ValueError(f"ChatHyCo takes text only; got a {kind!r} content block in a {message.type} message")
    return "".join(parts)


def _role_of(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        if message.tool_calls:
            raise ValueError("ChatHyCo does not support tool calling; remove AI messages with tool_calls")
        return "assistant"
    if isinstance(message, ChatMessage) and message.role in ("system", "user", "assistant"):
        return message.role
    raise ValueError(
        f"ChatHyCo cannot render a {type(message).__name__} (type {message.type!r}); it takes system, "
        "human and AI messages (no tools)"
    )


def _to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": _role_of(m), "content": _text_of(m)} for m in messages]


def _document_texts(documents: Any) -> list[str]:
    """``Document`` / ``str`` items -> passage texts (in order)."""
    if isinstance(documents, (str, Document)):
        raise ValueError("documents must be a list of Documents or strings, not a single one")
    try:
        items = list(documents)
    except TypeError as error:
        raise ValueError(f"documents must be a list of Documents or strings, got {type(documents).__name__}") from error
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, Document):
            texts.append(item.page_content)
        elif isinstance(item, str):
            texts.append(item)
        else:
            raise ValueError(f"documents[{i}] must be a Document or a string, got {type(item).__name__}")
    return texts


def _question_message(inputs: Mapping[str, Any]) -> list[BaseMessage]:
    """``{"question", "documents"}`` -> messages whose last human message carries the documents."""
    if not isinstance(inputs, Mapping) or "question" not in inputs or DOCUMENTS_KEY not in inputs:
        raise ValueError(
            "ChatHyCo.with_documents() takes a dict with 'question' and 'documents', got "
            f"{sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__}"
        )
    question = inputs["question"]
    documents = inputs[DOCUMENTS_KEY]
    _document_texts(documents)  # fail here, naming the problem, not deep inside the model
    if isinstance(question, PromptValue):
        messages = list(question.to_messages())
    elif isinstance(question, str):
        messages = [HumanMessage(question)]
    elif isinstance(question, Sequence) and all(isinstance(m, BaseMessage) for m in question):
        messages = list(question)
    else:
        raise ValueError(f"question must be a string, a PromptValue or a list of messages, got {type(question).__name__}")
    if not messages or not isinstance(messages[-1], HumanMessage):
        raise ValueError("the question's last message must be a HumanMessage")
    last = messages[-1]
    messages[-1] = last.model_copy(update={"additional_kwargs": {**last.additional_kwargs, DOCUMENTS_KEY: list(documents)}})
    return messages


# --------------------------------------------------------------------------- generation


def _usage(input_tokens: int, output_tokens: int) -> UsageMetadata:
    return UsageMetadata(input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens)


class ChatHyCo(BaseChatModel):
    """A local chat model that absorbs retrieved documents as DyPRAG LoRA deltas.

    Example:
        ```python
        from langchain_hyco import ChatHyCo

        chat = ChatHyCo(mode="dyprag", max_tokens=32)  # nothing is loaded yet
        chat.invoke("Who won Super Bowl 50?", documents=retriever.invoke("Super Bowl 50"))

        # LCEL: a plain question in, an answer out, documents from any retriever
        chain = chat.with_documents(retriever)
        chain.invoke("Who won Super Bowl 50?")
        ```

    Per-call keyword arguments: ``documents``, ``mode``, ``model`` (another model name, served
    by its own cached engine), ``max_tokens``, ``temperature``.  The answer's
    ``response_metadata`` reports the mode, the passages injected as deltas, the context and
    passage tokens, the soft tokens (hybrid modes), the rank of the applied delta, the token
    counts and the time spent per stage
    (``PreparedRequest.stats``); ``usage_metadata`` comes from the engine's completion.
    """

    model_name: str = Field(default=DEFAULT_MODEL, alias="model")
    """HF id, local folder, ``.gguf`` file or alias of the served causal LM."""
    translator: str | None = None
    """Folder of a saved ``ParameterTranslator``; ``None`` = the one shipped for the default model."""
    mode: str = "combine"
    """Default mode: ``none``, ``rag``, ``hyco``, ``dyprag``, ``combine``, ``combine-hyco``, ``hybrid`` or
    ``combine-hybrid``."""
    max_tokens: int = Field(default=64, ge=1)
    """Most tokens generated per answer."""
    temperature: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    """0 = greedy (deterministic); above 0 samples at that temperature."""
    stop: list[str] | None = None
    """Text at which an answer ends (not included); the engine stops generating there."""
    device: str | None = None
    """Torch device; ``None`` picks CUDA when present, else CPU."""
    compressor: Any | None = Field(default=None, exclude=True)
    """Compresses the prompt copy of the passages in the compressing modes (``hyco``, ``combine-hyco``,
    ``hybrid``, ``combine-hybrid``; default: the engine's HyCo compressor): a LangChain
    ``BaseDocumentCompressor`` (e.g. ``langchain_hyco.HyCoCompressor``) or any object with the core
    ``.compress(query, documents) -> result.texts`` (e.g. ``hyco_rag.compression.HyCoCompressor``)."""
    engine: Any | None = Field(default=None, exclude=True)
    """A ready :class:`hyco_rag.engine.Engine` to serve instead of loading ``model``/``translator``."""
    streaming: bool = False
    """Generate by streaming even when invoked (callbacks then see every token)."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    @field_validator("mode")
    @classmethod
    def _check_mode(cls, value: str) -> str:
        return Mode.parse(value).value

    @model_validator(mode="after")
    def _check_objects(self) -> Self:
        if self.compressor is not None and not (
            isinstance(self.compressor, BaseDocumentCompressor) or callable(getattr(self.compressor, "compress", None))
        ):
            raise ValueError(
                "compressor must be a BaseDocumentCompressor or have .compress(query, documents), got "
                f"{type(self.compressor).__name__}"
            )
        if self.engine is not None and not _is_engine(self.engine):
            raise ValueError(f"engine must be a hyco_rag.engine.Engine, got {type(self.engine).__name__}")
        return self

    # ------------------------------------------------------------------ LangChain plumbing

    @property
    def _llm_type(self) -> str:
        return "hyco-dyprag"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "translator": self.translator,
            "mode": self.mode,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="hyco",
            ls_model_name=str(kwargs.get("model") or self.model_name),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    def with_documents(self, retriever: Runnable[Any, Sequence[Document | str]] | None = None) -> Runnable[Any, BaseMessage]:
        """A chain that answers with documents, for LCEL.

        Without ``retriever``: input ``{"question": str | messages | PromptValue, "documents":
        [Document | str, ...]}``.  With one: input is the question string; the retriever's
        documents for it are used.  Streams like the chat model itself.
        """
        attach = RunnableLambda(_question_message, name="HyCoAttachDocuments")
        if retriever is None:
            return attach | self
        return RunnableParallel(question=RunnablePassthrough(), documents=retriever) | attach | self

    # ------------------------------------------------------------------ preparing a request

    def _engine_for(self, model: str | None) -> Engine:
        """The engine of this call (blocking the first time a model loads)."""
        if self.engine is not None:
            if model is not None and model != self.model_name:
                raise ValueError(f"this ChatHyCo serves a given engine; it cannot switch to model {model!r} per call")
            return self.engine  # type: ignore[no-any-return]
        from hyco_rag.engine import get_engine

        return get_engine(model or self.model_name, self.translator, self.device)

    def _model_name(self, kwargs: Mapping[str, Any]) -> str:
        return str(kwargs.get("model") or self.model_name)

    def _call(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: Mapping[str, Any]) -> _Call:
        """Check one call's messages and arguments (cheap, no model): what to prepare."""
        from hyco_rag.engine.sampling import SamplingParams

        unknown = set(kwargs) - CALL_KWARGS
        if unknown:
            raise ValueError(f"ChatHyCo got unexpected keyword arguments {sorted(unknown)}; it takes {sorted(CALL_KWARGS)}")
        if not messages:
            raise ValueError("ChatHyCo needs at least one message")
        mode = Mode.parse(kwargs.get("mode") or self.mode)
        sampling = SamplingParams(
            max_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            temperature=float(kwargs.get("temperature", self.temperature)),
            stop=tuple(stop if stop is not None else self.stop or ()),
        )
        documents = kwargs.get("documents")
        last = messages[-1]
        if documents is None and isinstance(last, HumanMessage):
            documents = last.additional_kwargs.get(DOCUMENTS_KEY)
        texts = None
        if documents is not None:
            if not isinstance(last, HumanMessage):
                raise ValueError("with documents, the last message must be the HumanMessage that asks the question")
            texts = _document_texts(documents)
        compressor = _as_core_compressor(self.compressor) if self.compressor is not None and mode.compresses else None
        return _Call(_to_chat_dicts(messages), texts, mode, sampling, compressor, kwargs.get("model"), self._model_name(kwargs))

    def _prepare(self, messages: list[BaseMessage], kwargs: dict[str, Any], stop: list[str] | None = None) -> PreparedRequest:
        """The engine request of one call (blocking: async callers use :meth:`_aprepare`)."""
        call = self._call(messages, stop, kwargs)
        return call.prepare(self._engine_for(call.model))

    async def _aprepare(
        self, messages: list[BaseMessage], kwargs: dict[str, Any], stop: list[str] | None
    ) -> tuple[Engine, _Call, PreparedRequest]:
        call = self._call(messages, stop, kwargs)
        engine = await asyncio.to_thread(self._engine_for, call.model)  # the first call may load the model
        return engine, call, await call.aprepare(engine)

    # ------------------------------------------------------------------ generation

    def _response_metadata(
        self, request: PreparedRequest, completion: Completion, model_name: str, **extra: Any
    ) -> dict[str, Any]:
        return {"model_name": model_name, **request.stats(completion), "model_provider": "hyco", **extra}

    def _result(self, request: PreparedRequest, model_name: str, completion: Completion) -> ChatResult:
        message = AIMessage(
            content=completion.text,
            usage_metadata=_usage(completion.prompt_tokens, completion.completion_tokens),
            response_metadata=self._response_metadata(request, completion, model_name, finish_reason=completion.finish_reason),
        )
        info = {"finish_reason": completion.finish_reason}
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=info)], llm_output={"model_name": model_name}
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
        call = self._call(messages, stop, kwargs)
        engine = self._engine_for(call.model)
        request = call.prepare(engine)
        return self._result(request, call.model_name, engine.generate(request, call.sampling))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop=stop, run_manager=run_manager, **kwargs))
        engine, call, request = await self._aprepare(messages, kwargs, stop)
        return self._result(request, call.model_name, await engine.agenerate(request, call.sampling))

    def _chunk(self, item: str | Completion, request: PreparedRequest, model_name: str) -> ChatGenerationChunk:
        """A text chunk, or for the final :class:`Completion` the usage/metadata chunk."""
        if isinstance(item, str):
            return ChatGenerationChunk(message=AIMessageChunk(content=item))
        metadata = self._response_metadata(request, item, model_name, finish_reason=item.finish_reason)
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=_usage(item.prompt_tokens, item.completion_tokens),
                response_metadata=metadata,
                chunk_position="last",
            ),
            generation_info={"finish_reason": item.finish_reason},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._call(messages, stop, kwargs)
        engine = self._engine_for(call.model)
        request = call.prepare(engine)
        items = engine.stream(request, call.sampling)
        try:
            for item in items:
                chunk = self._chunk(item, request, call.model_name)
                if isinstance(item, str) and run_manager is not None:
                    run_manager.on_llm_new_token(item, chunk=chunk)
                yield chunk
        finally:
            _close(items)  # a consumer that stopped early frees the engine slot now, not at GC

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        engine, call, request = await self._aprepare(messages, kwargs, stop)
        items = engine.astream(request, call.sampling)
        try:
            async for item in items:
                chunk = self._chunk(item, request, call.model_name)
                if isinstance(item, str) and run_manager is not None:
                    await run_manager.on_llm_new_token(item, chunk=chunk)
                yield chunk
        finally:
            await items.aclose()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- engine plumbing


class _Call:
    """One checked call: the chat dicts, passages, mode, sampling and compressor it prepares with."""

    def __init__(
        self,
        messages: list[dict[str, str]],
        documents: list[str] | None,
        mode: Mode,
        sampling: SamplingParams,
        compressor: Any | None,
        model: str | None,
        model_name: str,
    ) -> None:
        self.messages, self.documents, self.mode, self.sampling = messages, documents, mode, sampling
        self.compressor, self.model, self.model_name = compressor, model, model_name

    def _arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.messages, self.documents), {"mode": self.mode, "compressor": self.compressor}

    def prepare(self, engine: Engine) -> PreparedRequest:
        args, kwargs = self._arguments()
        return engine.prepare(*args, **kwargs)

    async def aprepare(self, engine: Engine) -> PreparedRequest:
        args, kwargs = self._arguments()
        return await engine.aprepare(*args, **kwargs)


def _is_engine(value: Any) -> bool:
    """Whether ``value`` is a :class:`hyco_rag.engine.Engine` (without importing torch: an engine
    can only exist once its module was imported)."""
    module = sys.modules.get("hyco_rag.engine.engine")
    return module is not None and isinstance(value, module.Engine)


def _close(items: Any) -> None:
    close = getattr(items, "close", None)
    if callable(close):
        close()


def _as_core_compressor(compressor: Any) -> Any:
    """``compressor`` as the engine's ``.compress(query, texts, rate=|target_tokens=) -> .texts``.

    A LangChain ``BaseDocumentCompressor`` is adapted (its own settings set its budget); a core
    compressor that takes the budget keywords is passed as it is (so the engine counts the budget
    in the served model's tokens); one that takes only ``(query, documents)`` gets no budget.
    """
    if isinstance(compressor, BaseDocumentCompressor):
        return _DocumentCompressorAdapter(compressor)
    if _takes_budget(compressor.compress):
        return compressor
    return _NoBudgetAdapter(compressor)


def _takes_budget(method: Any) -> bool:
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True
    names = {p.name for p in parameters}
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters) or {"rate", "target_tokens"} <= names


class _DocumentCompressorAdapter:
    """A LangChain ``BaseDocumentCompressor`` seen as the core compressor protocol."""

    def __init__(self, compressor: BaseDocumentCompressor) -> None:
        self.compressor = compressor

    def compress(self, query: str, texts: list[str], **budget: Any) -> Any:
        kept = self.compressor.compress_documents([Document(page_content=t) for t in texts], query)
        return SimpleNamespace(texts=[d.page_content for d in kept])


class _NoBudgetAdapter:
    """A core-protocol compressor whose ``compress`` takes only ``(query, documents)``."""

    def __init__(self, compressor: Any) -> None:
        self.compressor = compressor

    def compress(self, query: str, texts: list[str], **budget: Any) -> Any:
        return self.compressor.compress(query, texts)
