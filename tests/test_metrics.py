import pytest

from hyco_rag.metrics import (
    answer_in_text,
    best_exact_match,
    best_f1,
    normalize_answer,
    qa_scores,
    token_f1,
)


def test_normalisation_follows_squad():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an Apple, a day") == "apple day"


def test_exact_match_and_f1_take_the_best_gold():
    assert best_exact_match("the Denver Broncos", ["Broncos", "Denver Broncos"]) == 1.0
    assert best_exact_match("Denver", ["Denver Broncos"]) == 0.0
    assert token_f1("Denver", "Denver Broncos") == pytest.approx(2 / 3)
    assert best_f1("Broncos of Denver", ["Carolina Panthers", "Denver Broncos"]) == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_answer_recall_matches_whole_words_only():
    assert answer_in_text("They won in May 21, 2013 at the stadium.", ["May 21, 2013"])
    assert not answer_in_text("Denverite", ["Denver"])
    assert not answer_in_text("anything", ["the"])  # normalises to empty: never counts


def test_qa_scores_are_percentages_and_reject_missing_golds():
    scores = qa_scores(["Paris", "Lyon"], [["Paris"], ["Marseille"]])
    assert scores == {"em": 50.0, "f1": 50.0, "count": 2}
    with pytest.raises(ValueError, match="gold"):
        best_f1("x", [])
    with pytest.raises(ValueError):
        qa_scores(["a"], [])
