"""Retrieved-distractor QA sets: a question's gold paragraph among the paragraphs a dense
retriever ranks highest for that question.

Same-article distractors (:func:`hyco_rag.data.load_squad`) are topically close but often easy
to tell apart by the question's wording; what a real retriever hands a compressor (the
NQ-style setting) is passages that *look* like answers to the question and are not. Here the
distractors are the paragraphs of *other* articles (other titles) that the index ranks highest
for the question and that contain none of its answers, so a distractor can never hold the
answer by accident and the gold paragraph is the only one that does.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from hyco_rag.data.schema import AnswerSpan, Passage, QAExample
from hyco_rag.metrics import answer_in_text


class _Retrieved(Protocol):
    @property
    def passage(self) -> Passage: ...


class PassageSearch(Protocol):
    """What the builder needs of an index (:class:`hyco_rag.retrieval.DenseIndex` has it)."""

    def __len__(self) -> int: ...

    def search(self, query: str, k: int = 3) -> Sequence[_Retrieved]: ...


def with_retrieved_distractors(
    examples: Sequence[QAExample],
    index: PassageSearch,
    *,
    num_distractors: int = 9,
    seed: int = 0,
    pool: int = 64,
) -> list[QAExample]:
    """``examples`` with their gold paragraph (``gold[0]``) and ``num_distractors`` retrieved ones.

    For each question the index is searched for ``pool`` passages (more when too few qualify);
    a passage qualifies when its title differs from the gold paragraph's (another article) and
    it contains none of the answers (case-insensitive). The gold paragraph lands at a position
    drawn from ``(seed, example id)``, so a question's set does not depend on which other
    questions are built with it. Answer spans are moved to the gold's new index.

    Raises:
        ValueError: an example without exactly one gold paragraph, or an index that cannot
            supply ``num_distractors`` qualifying passages for a question.
    """
    if isinstance(num_distractors, bool) or not isinstance(num_distractors, int) or num_distractors < 0:
        raise ValueError(f"num_distractors must be an integer >= 0, got {num_distractors!r}")
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    built = []
    for example in examples:
        if len(example.gold) != 1:
            raise ValueError(f"example {example.id!r} needs exactly one gold paragraph, has {len(example.gold)}")
        gold = example.passages[example.gold[0]]
        distractors = _distractors(example, gold, index, num_distractors, pool)
        position = random.Random(f"{seed}-{example.id}").randint(0, len(distractors))
        passages = [*distractors[:position], gold, *distractors[position:]]
        spans = [AnswerSpan(position, s.start, s.end) for s in example.answer_spans if s.passage == example.gold[0]]
        built.append(replace(example, passages=passages, gold=[position], answer_spans=spans, supporting_sentences=[]))
    return built


def _distractors(example: QAExample, gold: Passage, index: PassageSearch, count: int, pool: int) -> list[Passage]:
    if count == 0:
        return []
    k = min(pool, len(index))
    while True:
        chosen: list[Passage] = []
        seen: set[str] = set()
        for hit in index.search(example.question, k=k):
            passage = hit.passage
            if passage.title == gold.title or passage.text in seen or answer_in_text(passage.text, example.answers):
                continue
            seen.add(passage.text)
            chosen.append(passage)
            if len(chosen) == count:
                return chosen
        if k >= len(index):
            raise ValueError(
                f"only {len(chosen)} of {len(index)} indexed passages can be distractors for {example.id!r} "
                f"(another title, none of its answers); {count} are needed"
            )
        k = min(4 * k, len(index))
