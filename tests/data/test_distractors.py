"""Retrieved distractors: other articles only, never the answer, deterministic gold position."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hyco_rag.data.distractors import with_retrieved_distractors
from hyco_rag.data.schema import AnswerSpan, Passage, QAExample


@dataclass
class _Hit:
    passage: Passage


class _RankedIndex:
    """Returns its passages in a fixed order (the 'retriever ranking'), recording each k asked."""

    def __init__(self, passages: list[Passage]) -> None:
        self.passages = passages
        self.asked: list[int] = []

    def __len__(self) -> int:
        return len(self.passages)

    def search(self, query: str, k: int = 3) -> list[_Hit]:
        self.asked.append(k)
        return [_Hit(p) for p in self.passages[:k]]


GOLD = Passage("Denver Broncos won Super Bowl 50 in Santa Clara.", title="Super Bowl 50", id="0-0")


def _example(example_id: str = "q1") -> QAExample:
    return QAExample(
        id=example_id,
        question="Who won Super Bowl 50?",
        answers=["Denver Broncos"],
        passages=[GOLD],
        gold=[0],
        answer_spans=[AnswerSpan(0, 0, 14)],
    )


def _corpus() -> list[Passage]:
    return [
        GOLD,  # the gold itself: same title
        Passage("Super Bowl 50 was held at Levi's Stadium.", title="Super Bowl 50", id="0-1"),  # same article
        Passage("The Denver Broncos are a team in Colorado.", title="Denver", id="1-0"),  # holds the answer
        *[Passage(f"Football season {i} ended with a final game.", title=f"Season {i}", id=f"{i + 2}-0") for i in range(12)],
    ]


def test_distractors_come_from_other_articles_and_lack_the_answer():
    index = _RankedIndex(_corpus())
    (built,) = with_retrieved_distractors([_example()], index, num_distractors=9, pool=64)
    assert len(built.passages) == 10 and built.passages[built.gold[0]] == GOLD
    distractors = [p for i, p in enumerate(built.passages) if i != built.gold[0]]
    assert all(p.title != GOLD.title and "Broncos" not in p.text for p in distractors)
    assert [p.id for p in distractors] == [f"{i + 2}-0" for i in range(9)]  # the retriever's order, best first
    assert built.answer_spans == [AnswerSpan(built.gold[0], 0, 14)]  # moved with the gold paragraph
    assert _example().passages == [GOLD]  # the input example is left as it was


def test_gold_position_depends_on_seed_and_id_only():
    index = _RankedIndex(_corpus())
    alone = with_retrieved_distractors([_example("q7")], index, seed=3)[0].gold
    among = with_retrieved_distractors([_example("q1"), _example("q7")], index, seed=3)[1].gold
    assert alone == among
    positions = {with_retrieved_distractors([_example(f"q{i}")], index, seed=0)[0].gold[0] for i in range(40)}
    assert len(positions) > 3  # spread over the list, not always first


def test_a_small_pool_grows_until_enough_qualify():
    index = _RankedIndex(_corpus())
    (built,) = with_retrieved_distractors([_example()], index, num_distractors=9, pool=4)
    assert len(built.passages) == 10 and index.asked == [4, 15]


def test_too_few_candidates_and_bad_arguments_raise():
    with pytest.raises(ValueError, match="only 12 of 15 indexed passages can be distractors"):
        with_retrieved_distractors([_example()], _RankedIndex(_corpus()), num_distractors=13)
    with pytest.raises(ValueError, match="num_distractors"):
        with_retrieved_distractors([_example()], _RankedIndex(_corpus()), num_distractors=True)
    two_gold = QAExample(id="q", question="?", answers=["a"], passages=[GOLD, GOLD], gold=[0, 1])
    with pytest.raises(ValueError, match="exactly one gold paragraph"):
        with_retrieved_distractors([two_gold], _RankedIndex(_corpus()))
    assert with_retrieved_distractors([_example()], _RankedIndex(_corpus()), num_distractors=0)[0].passages == [GOLD]
