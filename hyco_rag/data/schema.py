"""The one shape every QA loader returns, whatever the source dataset."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Passage:
    """A retrievable unit of text. ``sentences`` holds character spans when the source has them."""

    text: str
    title: str = ""
    id: str = ""
    sentences: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class AnswerSpan:
    """Where a gold answer sits: ``passage`` index into ``QAExample.passages``, char offsets."""

    passage: int
    start: int
    end: int


@dataclass
class QAExample:
    """A question with its candidate passages and every label we train or evaluate on.

    ``gold`` lists the indices of passages that hold (part of) the answer; for multi-hop sets
    that is every supporting paragraph. ``supporting_sentences`` holds (passage, sentence)
    index pairs into ``Passage.sentences`` where the source marks them.
    """

    id: str
    question: str
    answers: list[str]
    passages: list[Passage] = field(default_factory=list)
    gold: list[int] = field(default_factory=list)
    answer_spans: list[AnswerSpan] = field(default_factory=list)
    supporting_sentences: list[tuple[int, int]] = field(default_factory=list)
    source: str = ""

    @property
    def gold_passages(self) -> list[Passage]:
        return [self.passages[i] for i in self.gold]
