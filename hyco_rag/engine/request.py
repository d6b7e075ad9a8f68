"""What flows through the engine: a prepared request in, a completion out.

A :class:`PreparedRequest` is everything decided before decoding (the rendered prompt and its
token ids, the combined DyPRAG delta, what the context cost); a :class:`Completion` is what
decoding produced.  Both are plain data, so every client (chat models, the server, the CLI,
benchmarks) reports the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hyco_rag.engine.modes import Mode

if TYPE_CHECKING:
    import torch

    from hyco_rag.dyprag.delta import LoRADelta


@dataclass
class PreparedRequest:
    """One request ready to decode.

    Attributes:
        prompt: the rendered prompt text.
        prompt_ids: its token ids (what the model reads).
        delta: the request's combined DyPRAG delta, or ``None``.
        mode: how the documents were used; ``None`` for a plain chat turn without documents.
        documents: non-blank passages the request carried.
        passages_injected: passages turned into the delta.
        context_tokens: tokens of passage text placed in the prompt (compressed, if so), soft
            tokens included.
        passage_tokens: tokens of the passages themselves (what plain RAG would place).
        soft_embeds: ``[k, hidden]`` soft tokens written over ``prompt_ids[soft_start:soft_start + k]``
            (hybrid modes), or ``None``.
        soft_start: where the soft tokens start in ``prompt_ids``.
        timings: seconds spent in ``translate``, ``compress`` and ``soft`` while preparing.
    """

    prompt: str
    prompt_ids: list[int]
    delta: LoRADelta | None = None
    mode: Mode | None = None
    documents: int = 0
    passages_injected: int = 0
    context_tokens: int = 0
    passage_tokens: int = 0
    soft_embeds: torch.Tensor | None = None
    soft_start: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def soft_tokens(self) -> int:
        return int(self.soft_embeds.shape[0]) if self.soft_embeds is not None else 0

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def delta_rank(self) -> int:
        return self.delta.rank if self.delta is not None else 0

    def stats(self, completion: Completion | None = None) -> dict[str, Any]:
        """Plain, JSON-serialisable costs of this request (and of its completion when given)."""
        data: dict[str, Any] = {
            "mode": self.mode.value if self.mode is not None else None,
            "documents": self.documents,
            "passages_injected": self.passages_injected,
            "context_tokens": self.context_tokens,
            "passage_tokens": self.passage_tokens,
            "soft_tokens": self.soft_tokens,
            "delta_rank": self.delta_rank,
        }
        timings = dict(self.timings)
        if completion is not None:
            data.update(
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                total_tokens=completion.total_tokens,
            )
            timings.update(completion.timings)
        data["timings"] = timings
        return data


@dataclass(frozen=True)
class Completion:
    """The end of one generation.

    ``finish_reason`` is ``"stop"`` (end of sequence or a stop sequence) or ``"length"``
    (``max_tokens`` reached).  ``timings`` holds ``queue`` (waiting for a batch slot),
    ``first_token`` (submission to first token) and ``generate`` (submission to the end).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Answer:
    """A question answered end to end: the request as prepared and its completion."""

    request: PreparedRequest
    completion: Completion

    @property
    def text(self) -> str:
        return self.completion.text

    def stats(self) -> dict[str, Any]:
        return self.request.stats(self.completion)
