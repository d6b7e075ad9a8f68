"""The main job: a real RAG run over the demo corpus that ships with the package.

retrieve (MiniLM over 346 SQuAD paragraphs) -> [compress / translate, per mode] -> generate
(SmolLM2 with its chat template). Every number it prints is measured, nothing is canned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from hyco_rag.data import load_demo_corpus, load_demo_questions
from hyco_rag.generation import ChatGenerator, GenerationConfig
from hyco_rag.metrics import best_exact_match, best_f1
from hyco_rag.prompts import count_tokens, format_documents
from hyco_rag.retrieval import DenseIndex

logger = logging.getLogger(__name__)

MODES = ("closed-book", "rag")


@dataclass
class DemoConfig:
    """What the demo runs; the defaults are the embedded offline models."""

    llm: str | None = None
    encoder: str | None = None
    k: int = 3
    questions: int | None = None
    max_new_tokens: int = 24
    mode: str = "rag"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.questions is not None and self.questions < 1:
            raise ValueError(f"questions must be >= 1, got {self.questions}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")


@dataclass
class DemoAnswer:
    question: str
    answer: str
    gold: list[str]
    context_tokens: int
    retrieved_titles: list[str] = field(default_factory=list)
    gold_retrieved: bool = False
    em: float = 0.0
    f1: float = 0.0


def run_demo(config: DemoConfig | None = None, progress: bool = True) -> list[DemoAnswer]:
    """Index the demo corpus, retrieve for each demo question, and answer with the LLM."""
    config = config or DemoConfig()
    questions = load_demo_questions()[: config.questions]
    started = time.perf_counter()
    index = DenseIndex.from_pretrained(config.encoder)
    index.add(load_demo_corpus(), progress=progress)
    generator = ChatGenerator.from_pretrained(
        config.llm, config=GenerationConfig(max_new_tokens=config.max_new_tokens, stop_at_newline=True)
    )
    logger.info("models loaded and %d passages indexed in %.1f s", len(index), time.perf_counter() - started)

    answers: list[DemoAnswer] = []
    for item in tqdm(questions, desc=f"demo ({config.mode})", disable=not progress):
        hits = index.search(item.question, config.k) if config.mode != "closed-book" else []
        documents = [hit.passage.text for hit in hits]
        generation = generator.answer([item.question], [documents])[0]
        answers.append(
            DemoAnswer(
                question=item.question,
                answer=generation.text,
                gold=item.answers,
                context_tokens=count_tokens(generator.tokenizer, format_documents(documents)) if documents else 0,
                retrieved_titles=[hit.passage.title for hit in hits],
                gold_retrieved=any(hit.passage.id == item.passage_id for hit in hits),
                em=best_exact_match(generation.text, item.answers),
                f1=best_f1(generation.text, item.answers),
            )
        )
    return answers
