"""Chat generation with a served HF causal LM: batched, greedy by default, with streaming.

This is the offline "generate" end of the pipeline (evaluation, training reports): a loaded
model with its prompt template, decoding with the serving engine's own batch decoder in the
caller's thread.  Serving goes through :class:`hyco_rag.engine.Engine`, which owns a worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from hyco_rag.prompts import DEFAULT_TEMPLATE, PromptTemplate, build_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from hyco_rag.dyprag.delta import LoRADelta
    from hyco_rag.dyprag.injection import DeltaInjector

logger = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """Decoding settings. Greedy by default: benchmarks must be deterministic."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 8
    stop_at_newline: bool = False  # keep the first line only (short-answer QA)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")


@dataclass
class Generation:
    """One generated answer with the token counts a benchmark reports."""

    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class ChatGenerator:
    """Generate chat answers with ``model`` in the model's own chat template."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    config: GenerationConfig = field(default_factory=GenerationConfig)
    template: PromptTemplate = DEFAULT_TEMPLATE
    _delta_injector: DeltaInjector | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, **kwargs: object) -> ChatGenerator:
        """Load by HF id, local folder or embedded default (see :mod:`hyco_rag.models`)."""
        from hyco_rag.models import load_causal_lm

        device = kwargs.pop("device", None)
        dtype = kwargs.pop("dtype", None)
        model, tokenizer = load_causal_lm(name_or_path, device=device, dtype=dtype)  # type: ignore[arg-type]
        return cls(model, tokenizer, **kwargs)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt(self, question: str, documents: Sequence[str] = ()) -> str:
        return build_prompt(self.tokenizer, question, documents, self.template)

    def _injector(self, deltas: Sequence[LoRADelta | None]) -> DeltaInjector | None:
        if not any(delta is not None for delta in deltas):
            return None
        if self._delta_injector is None:
            from hyco_rag.dyprag.injection import DeltaInjector

            self._delta_injector = DeltaInjector(self.model)
        return self._delta_injector

    def generate_prompts(
        self,
        prompts: Sequence[str],
        config: GenerationConfig | None = None,
        deltas: Sequence[LoRADelta | None] | None = None,
    ) -> list[Generation]:
        """Generate for already rendered prompts, up to ``config.batch_size`` rows at a time.

        The engine's decoder (:class:`hyco_rag.engine.batch.DecodeBatch`) runs in this thread:
        a row that finishes leaves the batch and the next prompt takes its slot, so offline
        evaluation and serving decode with the same code.  ``deltas`` gives one DyPRAG
        :class:`~hyco_rag.dyprag.delta.LoRADelta` (or ``None``) per prompt.
        """
        from hyco_rag.engine.batch import DecodeBatch, Row, eos_token_ids
        from hyco_rag.engine.sampling import SamplingParams

        config = config or self.config
        prompts = list(prompts)
        row_deltas = list(deltas) if deltas is not None else [None] * len(prompts)
        if len(row_deltas) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(row_deltas)} deltas")
        for delta in row_deltas:  # fail before any generation, nothing applied
            if delta is not None:
                delta.validate()
        sampling = SamplingParams(
            max_tokens=config.max_new_tokens,
            temperature=config.temperature if config.do_sample else 0.0,
            top_p=config.top_p if config.do_sample else 1.0,
            stop=("\n",) if config.stop_at_newline else (),
        )
        rows = [
            Row(list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]), sampling, delta)
            for prompt, delta in zip(prompts, row_deltas)
        ]
        batch = DecodeBatch(self.model, self.tokenizer, self._injector(row_deltas), eos_token_ids(self.model, self.tokenizer))
        waiting = list(reversed(rows))
        failures: list[BaseException] = []
        for row in rows:
            row.on_error = failures.append
        while waiting or batch.rows:
            if waiting and len(batch) < config.batch_size:
                batch.admit([waiting.pop() for _ in range(min(len(waiting), config.batch_size - len(batch)))])
            else:
                batch.step()
            batch.evict()
            if failures:
                raise failures[0]
        return [Generation(row.text, len(row.prompt_ids), len(row.generated)) for row in rows]

    def answer(
        self,
        questions: Sequence[str],
        documents: Sequence[Sequence[str]] | None = None,
        config: GenerationConfig | None = None,
    ) -> list[Generation]:
        """Answer each question with its documents (or closed-book when ``documents`` is None)."""
        if documents is not None and len(documents) != len(questions):
            raise ValueError(f"got {len(questions)} questions but {len(documents)} document lists")
        docs = documents if documents is not None else [()] * len(questions)
        return self.generate_prompts([self.prompt(q, d) for q, d in zip(questions, docs)], config)
