"""Synthetic-fact probe data: deterministic cards, disjoint train/eval entities and towns, other
question wordings for evaluation, candidates of the same type that hold the answer."""

from __future__ import annotations

import pytest

from hyco_rag.evaluation.synthetic import (
    ATTRIBUTES,
    QUESTIONS,
    TOWNS_EVAL,
    TOWNS_TRAIN,
    candidate_pool,
    check_disjoint,
    make_cards,
    probe_questions,
)


def test_cards_are_deterministic_and_splits_disjoint():
    train, evaluation = make_cards(400, "train"), make_cards(300, "eval")
    assert [c.text for c in make_cards(300, "eval")] == [c.text for c in evaluation]
    assert len({c.name for c in evaluation}) == 300
    check_disjoint(train, evaluation)
    assert not {c.name for c in train} & {c.name for c in evaluation}
    assert not set(TOWNS_TRAIN) & set(TOWNS_EVAL)
    assert {c.attributes["town"] for c in evaluation} <= set(TOWNS_EVAL)
    assert {c.attributes["town"] for c in train} <= set(TOWNS_TRAIN)
    with pytest.raises(ValueError, match="also appear in training"):
        check_disjoint(train, train[:3])
    with pytest.raises(ValueError, match="split"):
        make_cards(1, "test")


def test_every_card_states_its_attributes_and_eval_questions_use_other_wordings():
    card = make_cards(1, "eval")[0]
    for attribute in ATTRIBUTES:
        assert card.attributes[attribute] in card.text
    train_forms = {f for forms, _ in QUESTIONS.values() for f in forms}
    eval_forms = {f for _, forms in QUESTIONS.values() for f in forms}
    assert not train_forms & eval_forms
    assert card.name in card.question("pet")


def test_probe_questions_have_ten_or_more_same_type_candidates():
    questions = probe_questions(make_cards(300, "eval"))
    assert len(questions) == 300
    counts = {a: sum(q.attribute == a for q in questions) for a in ATTRIBUTES}
    assert set(counts.values()) == {75}
    for q in questions:
        assert len(q.candidates) >= 10 and q.candidates[q.gold_index] == q.answer
        assert q.candidates == candidate_pool(q.attribute, "eval")
