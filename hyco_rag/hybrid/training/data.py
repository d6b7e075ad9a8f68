"""Training examples for the hybrid adapter's three stages, and the prompts they are read with.

* **paraphrase**: one passage's soft tokens alone; the target is the passage itself (its first
  ``paraphrase_tokens`` tokens).
* **completion**: the soft tokens of a passage's first part plus some of that part's words
  (kept in order, standing in for the compressor's kept text); the target is how the passage
  goes on.
* **instruction**: a QA question with its gold passage and distractors; soft tokens over all
  passages plus the real compressor's kept text at the training budget; the target is the
  answer, and the teacher is the same LLM reading the uncompressed passages.

Questions come from SQuAD v1.1 *train* and the multi-hop train splits only, through the
compressor's training data (:mod:`hyco_rag.compression.training.data`, whose
:func:`~hyco_rag.compression.training.data.check_no_leak` fails on any paragraph or question
shared with an evaluation set).  Every prompt is built by :func:`student_prompt` /
:func:`teacher_prompt`, with the engine's template, so training reads what serving reads.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from hyco_rag.hybrid.soft import SOFT_MARKER
from hyco_rag.prompts import PromptTemplate, build_messages, format_documents

STAGES: tuple[str, ...] = ("paraphrase", "completion", "instruction")

#: The pretraining stages' instructions (the user turn after the documents).
PARAPHRASE_INSTRUCTION = "Repeat the document above word for word."
COMPLETION_INSTRUCTION = "Continue the document from where it stops."


@dataclass
class QAItem:
    """One instruction-stage question: its passages (gold among distractors) and answers."""

    id: str
    question: str
    answers: list[str]
    passages: list[str]
    source: str
    kept: list[str] = field(default_factory=list)  # the compressor's kept text, filled once and cached


def qa_items(*, squad_questions: int, multihop: bool, seed: int, same_article: int = 1, retrieved: int = 0) -> list[QAItem]:
    """SQuAD v1.1 train questions (gold + ``same_article`` distractors of its article, the
    closest first, + ``retrieved`` from other articles) and multi-hop train questions (up to 4
    paragraphs), checked against every evaluation set (raises ``DataLeakError`` on overlap)."""
    from hyco_rag.compression.training.data import (
        check_no_leak,
        evaluation_texts,
        multihop_groups,
        remove_eval_paragraphs,
        squad_groups,
    )

    groups = (
        squad_groups(limit=squad_questions, seed=seed, num_same_article=same_article, num_retrieved=retrieved)
        if squad_questions
        else []
    )
    if multihop:
        groups += multihop_groups(max_passages=4, seed=seed)
    paragraphs, questions = evaluation_texts()
    groups = remove_eval_paragraphs(groups, paragraphs, questions)
    check_no_leak(groups, paragraphs, questions)
    items = [
        QAItem(g.id, g.query, [a for a in g.answers if a.strip()], [p.text for p in g.passages if p.text.strip()], g.source)
        for g in groups
        if g.fine_labels and any(a.strip() for a in g.answers)
    ]
    random.Random(seed).shuffle(items)
    return items


def student_messages(instruction: str, kept: Sequence[str], template: PromptTemplate, *, qa: bool) -> list[dict[str, str]]:
    """The student's chat turn: ``Document [1]`` is the soft tokens, the kept text follows."""
    documents = [SOFT_MARKER, *[t for t in kept if t.strip()]]
    if qa:
        return build_messages(instruction, documents, template)
    return [{"role": "user", "content": f"{format_documents(documents, template)}\n\n{instruction}"}]


def teacher_messages(question: str, passages: Sequence[str], template: PromptTemplate) -> list[dict[str, str]]:
    """The teacher's turn: the same question over the uncompressed passages."""
    return build_messages(question, list(passages), template)


def keep_some_words(text: str, rate: float, rng: random.Random) -> str:
    """About ``rate`` of ``text``'s words, in order (the completion stage's stand-in for kept text)."""
    words = text.split()
    kept = [w for w in words if rng.random() < rate]
    return " ".join(kept)
