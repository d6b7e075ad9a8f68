"""Budget validation and unit selection on synthetic scores (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hyco_rag.compression.budget import (
    Budget,
    BudgetError,
    DocumentScores,
    fit_to_budget,
    resolve_budget,
    select_units,
    validate_floor,
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": float("nan")}, "rate must be a finite number"),
        ({"rate": 0.0}, "rate must be in (0, 1]"),
        ({"rate": -0.5}, "rate must be in (0, 1]"),
        ({"rate": 1.5}, "rate must be in (0, 1]"),
        ({"rate": True}, "rate must be a finite number"),
        ({"rate": "0.5"}, "rate must be a finite number"),
        ({"target_tokens": -1}, "target_tokens must be a positive integer"),
        ({"target_tokens": 0}, "target_tokens must be a positive integer"),
        ({"target_tokens": 0.0}, "target_tokens must be a positive integer"),
        ({"target_tokens": True}, "target_tokens must be a positive integer"),
        ({"target_tokens": 1.5}, "target_tokens must be a positive integer"),
        ({"target_tokens": float("nan")}, "target_tokens must be a positive integer"),
        ({"target_tokens": float("inf")}, "target_tokens must be a positive integer"),
        ({"rate": np.float64("nan")}, "rate must be a finite number"),
        ({"rate": np.bool_(True)}, "rate must be a finite number"),
        ({"threshold": True}, "threshold must be a finite number"),
        ({"threshold": float("inf")}, "threshold must be a finite number"),
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
    assert resolve_budget(None, 1, None, 0.25) == Budget("tokens", 1.0)
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


def test_reserved_masks_name_the_floor_and_the_forced_units():
    a = _doc([1] * 10, np.linspace(1, 0, 10), [0] * 10, [5.0])
    b = _doc([1] * 10, np.linspace(1, 0, 10), [0] * 10, [-5.0], forced=[False] * 9 + [True])
    reserved: list[np.ndarray] = []
    keeps = select_units([a, b], Budget("tokens", 6), min_tokens_per_passage=2, reserved=reserved)
    assert reserved[0].tolist() == [True, True] + [False] * 8
    assert reserved[1].tolist() == [True, True] + [False] * 7 + [True]
    assert all((k | ~r).all() for k, r in zip(keeps, reserved))  # reserved units are kept


def _fake_recount(keeps, docs, penalty):
    """A tokenizer whose joined text costs ``penalty`` more tokens per kept gap than the units say."""

    def count(d):
        keep = keeps[d]
        gaps = int(np.count_nonzero(np.diff(keep.astype(int)) == 1)) + int(keep[0]) if keep.size else 0
        return int(docs[d].unit_tokens[keep].sum()) + penalty * max(0, gaps - 1)

    return count


def test_fit_to_budget_never_drops_reserved_units_and_keeps_trimming_past_20_rounds():
    # Per-unit counts say 100 tokens a unit, the recount says 1: each round drops one unit,
    # so fitting 50 kept units into 10 tokens takes 40 rounds (the old loop gave up after 20
    # and returned 30 tokens for a 10-token budget).
    n = 50
    doc = _doc([100] * n, np.linspace(0, 1, n), [0] * n, [0.0])
    keeps = [np.ones(n, dtype=bool)]
    protected = [np.zeros(n, dtype=bool)]
    protected[0][[0, 1]] = True  # the two lowest-scoring units are reserved
    rounds = []

    def count(d):
        rounds.append(d)
        return int(keeps[d].sum())

    counts = [count(0)]
    fit_to_budget(counts, keeps, [doc], 10, protected, count)
    assert counts[0] == int(keeps[0].sum()) == 10
    assert keeps[0][[0, 1]].all()
    assert len(rounds) > 21


def test_fit_to_budget_raises_when_reserved_units_alone_exceed_the_budget():
    doc = _doc([1] * 6, [0.0] * 6, [0] * 6, [0.0])
    keeps = [np.array([True, False, True, False, True, False])]
    protected = [keeps[0].copy()]
    count = _fake_recount(keeps, [doc], penalty=2)
    counts = [count(0)]  # 3 units + 2 gaps x 2 = 7 tokens
    with pytest.raises(BudgetError, match="reserved units"):
        fit_to_budget(counts, keeps, [doc], 4, protected, count)
    assert keeps[0].tolist() == [True, False, True, False, True, False]  # nothing reserved was dropped


def test_a_passage_left_with_a_one_word_stub_is_dropped_and_its_budget_respent():
    # a: a relevant sentence and a weak one; b: one good word in an otherwise irrelevant sentence.
    a = _doc([1] * 14, [1.0] * 14, [0] * 10 + [1] * 4, [3.0, -1.0])
    b = _doc([1] * 6, [9.0, -9, -9, -9, -9, -9], [0] * 6, [2.0])
    stubby = select_units([a, b], Budget("tokens", 12), word_slack=0.0)
    assert 1 <= int(stubby[1].sum()) < 5  # word level, no stub rule: a "sleeping" stub survives
    clean = select_units([a, b], Budget("tokens", 12), word_slack=0.0, min_fragment_tokens=5)
    assert not clean[1].any()  # the stub passage is dropped ...
    assert int(clean[0].sum()) == 12  # ... and its tokens went to the relevant passage


def test_clause_pieces_are_kept_or_dropped_whole():
    # One sentence of three clauses (piece ids 0,0,0 | 1,1 | 2,2,2); clause 1 scores best.
    keep = [0.0, 0.0, 0.0, 5.0, -1.0, 1.0, 1.0, 1.0]
    pieces = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    doc = _doc([1] * 8, keep, [0] * 8, [1.0])
    doc.unit_piece = pieces
    keeps = select_units([doc], Budget("tokens", 5), word_slack=0.0)[0]
    for piece in range(3):
        assert len(set(keeps[pieces == piece].tolist())) == 1  # never half a clause
    assert keeps.tolist() == [False, False, False, True, True, True, True, True]


def test_a_structured_block_competes_with_its_sentence_score():
    # A JSON block (one protected unit, 6 tokens) with a low keep logit in a highly ranked sentence.
    block = _doc([6, 1, 1], [-4.0, 0.0, 0.0], [0, 1, 1], [6.0, -2.0])
    block.protected = np.array([True, False, False])
    block.unit_piece = np.array([0, 1, 1])
    other = _doc([1] * 6, [1.0] * 6, [0] * 6, [0.5])
    keeps = select_units([block, other], Budget("tokens", 6), word_slack=0.0)
    assert keeps[0][0] and not keeps[1].any()
