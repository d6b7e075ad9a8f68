"""The main job: a real RAG run over the demo corpus that ships with the package.

retrieve (MiniLM over 346 SQuAD paragraphs) -> compress (HyCo) / translate (DyPRAG), per mode
-> generate (SmolLM2 with its chat template). Every number it prints is measured, nothing is
canned.

Modes:

- ``closed-book``: no retrieval, the model alone;
- ``rag``: the retrieved passages in the prompt;
- ``hyco``: the passages compressed by HyCo to ``rate`` of their tokens;
- ``dyprag``: the passages become LoRA deltas, no passage tokens in the prompt;
- ``combine``: deltas plus the passages; ``combine-hyco``: deltas plus HyCo-compressed passages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from hyco_rag.data import load_demo_corpus, load_demo_questions
from hyco_rag.generation import ChatGenerator, GenerationConfig
from hyco_rag.metrics import best_exact_match, best_f1
from hyco_rag.prompts import count_tokens
from hyco_rag.retrieval import DenseIndex

logger = logging.getLogger(__name__)

MODES = ("closed-book", "rag", "hyco", "dyprag", "combine", "combine-hyco")
_COMPRESSES = {"hyco", "combine-hyco"}
_PARAMETRIC = {"dyprag": "dyprag", "combine": "combine", "combine-hyco": "combine"}


@dataclass
class DemoConfig:
    """What the demo runs; the defaults are the embedded offline models."""

    llm: str | None = None
    encoder: str | None = None
    k: int = 3
    questions: int | None = None
    max_new_tokens: int = 24
    mode: str = "rag"
    rate: float = 0.25

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.questions is not None and self.questions < 1:
            raise ValueError(f"questions must be >= 1, got {self.questions}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not 0 < self.rate <= 1:
            raise ValueError(f"rate must be in (0, 1], got {self.rate}")


@dataclass
class DemoAnswer:
    question: str
    answer: str
    gold: list[str]
    context_tokens: int
    passage_tokens: int
    retrieved_titles: list[str] = field(default_factory=list)
    gold_retrieved: bool = False
    em: float = 0.0
    f1: float = 0.0


class _RateCompressor:
    """A compressor bound to one rate, in the shape ``ParametricRAG`` calls it."""

    def __init__(self, compressor: Any, rate: float) -> None:
        self.compressor, self.rate = compressor, rate

    def compress(self, query: str, documents: Sequence[str]) -> Any:
        return self.compressor.compress(query, documents, rate=self.rate)


def run_demo(config: DemoConfig | None = None, progress: bool = True) -> list[DemoAnswer]:
    """Index the demo corpus, retrieve for each demo question, and answer in ``config.mode``."""
    config = config or DemoConfig()
    questions = load_demo_questions()[: config.questions]
    started = time.perf_counter()
    index = DenseIndex.from_pretrained(config.encoder)
    index.add(load_demo_corpus(), progress=progress)
    generator = ChatGenerator.from_pretrained(
        config.llm, config=GenerationConfig(max_new_tokens=config.max_new_tokens, stop_at_newline=True)
    )
    compressor = None
    if config.mode in _COMPRESSES:
        from hyco_rag.compression import HyCoCompressor

        compressor = _RateCompressor(HyCoCompressor(), config.rate)
    parametric = None
    if config.mode in _PARAMETRIC:
        from hyco_rag.dyprag import ParameterTranslator, ParametricRAG

        translator = ParameterTranslator.from_pretrained(model=generator.model)
        parametric = ParametricRAG(generator, translator, compressor=compressor)
    logger.info("models loaded and %d passages indexed in %.1f s", len(index), time.perf_counter() - started)

    def tokens(texts: Sequence[str]) -> int:
        return sum(count_tokens(generator.tokenizer, text) for text in texts if text.strip())

    answers: list[DemoAnswer] = []
    for item in tqdm(questions, desc=f"demo ({config.mode})", disable=not progress):
        hits = index.search(item.question, config.k) if config.mode != "closed-book" else []
        documents = [hit.passage.text for hit in hits]
        if parametric is not None:
            result = parametric.answer(item.question, documents, mode=_PARAMETRIC[config.mode])
            text, context_tokens = result.text, result.context_tokens
        else:
            context = compressor.compress(item.question, documents).texts if compressor and documents else documents
            text, context_tokens = generator.answer([item.question], [context])[0].text, tokens(context)
        answers.append(
            DemoAnswer(
                question=item.question,
                answer=text,
                gold=item.answers,
                context_tokens=context_tokens,
                passage_tokens=tokens(documents),
                retrieved_titles=[hit.passage.title for hit in hits],
                gold_retrieved=any(hit.passage.id == item.passage_id for hit in hits),
                em=best_exact_match(text, item.answers),
                f1=best_f1(text, item.answers),
            )
        )
    return answers
