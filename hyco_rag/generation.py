"""Chat generation with a served HF causal LM: batched, greedy by default, with streaming.

This is the "generate" end of the pipeline. It knows nothing about where the context came
from; compression hands it shorter documents and DyPRAG wraps its forward passes with deltas.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
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
    _injectors: dict[str, DeltaInjector] = field(default_factory=dict, init=False, repr=False, compare=False)

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

    def _generate_kwargs(self, config: GenerationConfig) -> dict[str, object]:
        kwargs: dict[str, object] = {
            "max_new_tokens": config.max_new_tokens,
            "do_sample": config.do_sample,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if config.do_sample:
            kwargs.update(temperature=config.temperature, top_p=config.top_p)
        else:  # silence "temperature is set but do_sample=False" from saved generation configs
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def _clean(self, text: str, config: GenerationConfig) -> str:
        text = text.strip()
        if config.stop_at_newline and text:
            text = text.splitlines()[0].strip()
        return text

    def _encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        # Left padding: generated tokens of every row then start at the same column.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        encoded = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        return {key: value.to(self.device) for key, value in encoded.items()}

    @torch.inference_mode()
    def generate_prompts(
        self,
        prompts: Sequence[str],
        config: GenerationConfig | None = None,
        deltas: Sequence[LoRADelta | None] | None = None,
    ) -> list[Generation]:
        """Generate for already rendered prompts, ``config.batch_size`` at a time.

        ``deltas`` gives one DyPRAG :class:`~hyco_rag.dyprag.delta.LoRADelta` (or ``None``) per
        prompt; rows of one batch carry different deltas through the per-row kernels.
        """
        config = config or self.config
        prompts = list(prompts)
        if deltas is not None and len(deltas) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(deltas)} deltas")
        results: list[Generation] = []
        for start in range(0, len(prompts), config.batch_size):
            batch = self._encode(prompts[start : start + config.batch_size])
            rows = list(deltas[start : start + config.batch_size]) if deltas is not None else []
            with self._deltas_applied(rows):
                output = self.model.generate(**batch, **self._generate_kwargs(config))
            width = batch["input_ids"].shape[1]
            for row, ids in enumerate(output):
                new_ids = ids[width:]
                completion = new_ids[new_ids != self.tokenizer.pad_token_id]
                results.append(
                    Generation(
                        text=self._clean(self.tokenizer.decode(new_ids, skip_special_tokens=True), config),
                        prompt_tokens=int(batch["attention_mask"][row].sum()),
                        completion_tokens=int(completion.numel()),
                    )
                )
        return results

    def _deltas_applied(self, deltas: Sequence[LoRADelta | None]) -> contextlib.AbstractContextManager[object]:
        if not any(delta is not None for delta in deltas):
            return contextlib.nullcontext()
        from hyco_rag.dyprag.injection import DeltaInjector

        injector = self._injectors.get("default")
        if injector is None:
            injector = self._injectors["default"] = DeltaInjector(self.model)
        return injector.apply(list(deltas))

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

    def stream_prompt(self, prompt: str, config: GenerationConfig | None = None) -> Iterator[str]:
        """Yield text pieces of one generation as they are produced."""
        from transformers import TextIteratorStreamer

        config = config or self.config
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        batch = self._encode([prompt])
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**batch, **self._generate_kwargs(config), streamer=streamer)
            except BaseException as error:  # re-raised in the consumer's thread
                errors.append(error)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            yield from (piece for piece in streamer if piece)
        finally:
            worker.join()
        if errors:
            raise errors[0]
