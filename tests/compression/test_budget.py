"""Budget validation and unit selection on synthetic scores (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hyco_rag.compression.budget import Budget, DocumentScores, resolve_budget, select_units, validate_floor


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": float("nan")}, "rate must be a finite number"),
        ({"rate": 0.0}, "rate must be in (0, 1]"),
        ({"rate": -0.5}, "rate must be in (0, 1]"),
        ({"rate": 1.5}, "rate must be in (0, 1]"),
        ({"rate": True}, "rate must be a finite number"),
        ({"rate": "0.5"}, "rate must be a finite number"),
        ({"target_tokens": -1}, "target_tokens must be non-negative"),
        ({"target_tokens": 1.5}, "target_tokens must be a non-negative integer"),
        ({"target_tokens": float("nan")}, "target_tokens must be a non-negative integer"),
        ({"threshold": float("nan")}, "threshold must be a finite number"),
        ({"threshold": 2}, "threshold must be in [0, 1]"),
        ({"rate": 0.5, "target_tokens": 10}, "at most one of rate, target_tokens, threshold"),
    ],
)
def test_invalid_budgets_are_rejected_with_the_reason(kwargs, message):
    args = {"rate": None, "target_tokens": None, "threshold": None, **kwargs}
    with pytest.raises(ValueError) as error:
        resolve_budget(args["rate"], args["target_tokens"], args["threshold"], 0.25)
    assert message in str(error.value)


def test_default_and_valid_budgets():
    assert resolve_budget(None, None, None, 0.25) == Budget("rate", 0.25)
    assert resolve_budget(1, None, None, 0.25) == Budget("rate", 1.0)
    assert resolve_budget(None, 0, None, 0.25) == Budget("tokens", 0.0)
    assert resolve_budget(None, 12.0, None, 0.25) == Budget("tokens", 12.0)
    assert Budget("rate", 0.125).tokens_for(100) == 12
    with pytest.raises(ValueError, match="min_tokens_per_passage"):
        validate_floor(-1)


def _doc(tokens, keep, sentences, sentence_scores, forced=None) -> DocumentScores:
    tokens = np.asarray(tokens)
    return DocumentScores(
        unit_tokens=tokens,
        unit_keep=np.asarray(keep, dtype=float),
        unit_sentence=np.asarray(sentences),
        sentence_global=np.asarray(sentence_scores, dtype=float),
        forced=np.zeros(tokens.shape[0], dtype=bool) if forced is None else np.asarray(forced),
    )


def test_selection_fills_the_budget_from_the_best_sentences_and_never_exceeds_it():
    rng = np.random.default_rng(0)
    docs = []
    for _ in range(5):
        n = 40
        sentences = np.repeat(np.arange(8), 5)
        docs.append(_doc(rng.integers(1, 4, n), rng.normal(size=n), sentences, rng.normal(size=8)))
    total = sum(int(d.unit_tokens.sum()) for d in docs)
    for rate in (0.5, 0.25, 0.125, 0.1, 0.01):
        keeps = select_units(docs, Budget("rate", rate))
        used = sum(int(d.unit_tokens[k].sum()) for d, k in zip(docs, keeps))
        limit = math.floor(rate * total)
        assert used <= limit
        assert used >= limit - 3  # units cost 1-3 tokens: the budget is filled


def test_best_sentence_wins_and_low_keep_words_go_first():
    good = _doc([1] * 6, [5, -5, 5, 5, 5, 5], [0, 0, 0, 1, 1, 1], [10.0, -10.0])
    bad = _doc([1] * 4, [0, 0, 0, 0], [0, 0, 0, 0], [-20.0])
    keeps = select_units([good, bad], Budget("tokens", 2), word_slack=0.5)
    assert keeps[0].tolist() == [True, False, True, False, False, False]
    assert not keeps[1].any()


def test_floor_and_force_tokens_are_reserved_first():
    a = _doc([1] * 10, np.linspace(1, 0, 10), [0] * 10, [5.0])
    b = _doc([1] * 10, np.linspace(1, 0, 10), [0] * 10, [-5.0], forced=[False] * 9 + [True])
    keeps = select_units([a, b], Budget("tokens", 6), min_tokens_per_passage=2)
    assert keeps[1][:2].all()  # floor: b's two best units
    assert keeps[1][9]  # the forced unit
    assert sum(int(k.sum()) for k in keeps) == 6
    with pytest.raises(ValueError, match="min_tokens_per_passage=5"):
        select_units([a, b], Budget("tokens", 6), min_tokens_per_passage=5)


def test_threshold_keeps_by_probability():
    doc = _doc([1, 1, 1], [2.0, 0.0, -2.0], [0, 0, 0], [0.0])
    keeps = select_units([doc], Budget("threshold", 0.5))
    assert keeps[0].tolist() == [True, True, False]
    assert select_units([doc], Budget("threshold", 0.0))[0].all()
