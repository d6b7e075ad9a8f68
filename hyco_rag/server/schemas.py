"""Request and response bodies of the OpenAI-compatible server (pydantic).

The chat request is OpenAI's ``/v1/chat/completions`` body plus two extension fields that
clients send through ``extra_body``:

* ``documents``: the passages of this request, strings or ``{"text": ..., "metadata": {...}}``
  (metadata is accepted and ignored by generation);
* ``hyco``: ``{"mode": "none" | "rag" | "hyco" | "dyprag" | "combine" | "combine-hyco" | "hybrid"
  | "combine-hybrid", "rate": float | "target_tokens": int}``; without ``mode`` the server's
  ``--mode`` applies.  ``hybrid`` places the hybrid adapter's soft tokens then the compressed
  text (the soft tokens count in the budget), ``combine-hybrid`` adds the DyPRAG deltas; an
  engine without a hybrid adapter answers them with a 400.

OpenAI fields the server has no use for (``user``, ``presence_penalty``, ``logit_bias`` ...)
are accepted and ignored, so stock clients work unchanged; fields whose meaning it cannot
honour (``n`` > 1, ``tools``) are refused with a 400 rather than silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TextPart(BaseModel):
    """One ``{"type": "text", "text": ...}`` part of a message's content."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """A chat message; ``developer`` is read as ``system`` (OpenAI's newer name for it)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class DocumentObject(BaseModel):
    """A passage with optional metadata (the metadata is not shown to the model)."""

    model_config = ConfigDict(extra="forbid")

    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class HycoOptions(BaseModel):
    """How this request uses its documents (the ``hyco`` extension field)."""

    model_config = ConfigDict(extra="forbid")

    mode: str | None = None
    rate: float | None = None
    target_tokens: int | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    tools: list[Any] | None = None
    documents: list[str | DocumentObject] | None = None
    hyco: HycoOptions | None = None


class CompressRequest(BaseModel):
    """``POST /v1/compress``: the ``hyco-rag compress`` CLI's per-line input, over HTTP.

    ``query`` (or ``question``) and ``documents``; at most one of ``rate``, ``target_tokens``
    and ``threshold``; ``hops`` for multi-hop evidence chains; an ``id`` is echoed back.
    """

    model_config = ConfigDict(extra="forbid")

    query: str | None = None
    question: str | None = None
    documents: list[str | DocumentObject]
    rate: float | None = None
    target_tokens: int | None = None
    threshold: float | None = None
    hops: int | None = None  # evidence-chain hops (HyCo); None: the compressor's single pass
    id: Any = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    """The non-streaming answer; ``hyco`` carries the request's costs (mode, context tokens,
    soft tokens, delta rank, timings), an extension OpenAI clients keep as an extra field."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    hyco: dict[str, Any] = Field(default_factory=dict)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hyco-rag"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
