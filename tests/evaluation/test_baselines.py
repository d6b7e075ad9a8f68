"""Baselines: budgets in reader tokens are never exceeded and are filled nearly to the brim."""

from __future__ import annotations

import numpy as np
import pytest

from hyco_rag.evaluation import (
    EmbeddingsFilterBaseline,
    RandomWordDrop,
    SentenceSelection,
    split_sentences,
    split_words,
    token_budget,
    truncate_to_budget,
)
from hyco_rag.evaluation.baselines import reimplemented_embeddings_filter_rank
from hyco_rag.evaluation.qa_eval import parse_rates

DOCUMENTS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by Gustave Eiffel's "
    "company and completed in 1889. The tower is 330 metres tall and was the tallest man-made structure "
    "for 41 years.",
    "Photosynthesis converts light energy into chemical energy. Plants, algae and cyanobacteria use it. "
    "Oxygen is released as a by-product of splitting water.",
    "The sky appears blue because air molecules scatter short wavelengths of sunlight more than long ones. "
    "This is called Rayleigh scattering. At sunset the light travels further and the sky turns red.",
    "Mount Everest is Earth's highest mountain above sea level, at 8,849 metres. It lies in the Himalayas "
    "on the border between Nepal and China.",
]
QUERY = "Why is the sky blue?"
RATES = (1 / 2, 1 / 4, 1 / 8, 1 / 10)


def test_token_budget_and_rate_validation():
    assert token_budget(100, 1 / 8) == 12
    assert token_budget(80, 1 / 8) == 10  # exact products are not floored away by float error
    assert token_budget(3, 0.1) == 1  # never zero
    for bad in (0, -0.5, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rate"):
            token_budget(100, bad)
    with pytest.raises(TypeError):
        token_budget(100, "1/8")  # type: ignore[arg-type]
    assert parse_rates("1/2, 1/8,0.25") == (0.5, 0.125, 0.25)
    with pytest.raises(ValueError, match="cannot read rate"):
        parse_rates("1/x")
    with pytest.raises(ValueError, match="rate"):
        parse_rates("2")


def test_split_sentences_keeps_every_word():
    text = DOCUMENTS[0] + ' He said "Yes." Then (1990) it ended!  Final words'
    sentences = split_sentences(text)
    assert sentences[0] == "The Eiffel Tower is a wrought-iron lattice tower in Paris."
    assert len(sentences) >= 5
    assert split_words(" ".join(sentences)) == split_words(text)


def _check_budget(counter, output, budget, slack):
    used = counter.total(output)
    assert used <= budget, f"budget {budget} exceeded: {used}"
    assert used >= budget - slack, f"budget {budget} badly under-filled: {used}"
    return used


@pytest.mark.parametrize("rate", RATES)
def test_random_word_drop_fills_budget_exactly(counter, rate):
    method = RandomWordDrop(counter, seed=0)
    budget = token_budget(counter.total(DOCUMENTS), rate)
    output = method.compress(QUERY, DOCUMENTS, budget)
    assert len(output) == len(DOCUMENTS)
    _check_budget(counter, output, budget, slack=2)
    # Kept words are a subsequence of each original document's words, in order.
    for original, kept in zip(DOCUMENTS, output):
        words = iter(split_words(original))
        assert all(word in words for word in split_words(kept))
    assert method.compress(QUERY, DOCUMENTS, budget) == output  # seeded by the query
    assert method.compress("another question", DOCUMENTS, budget) != output


@pytest.mark.parametrize("rate", RATES)
def test_sentence_selection_budget_and_relevance(counter, minilm, rate):
    method = SentenceSelection(counter, minilm)
    budget = token_budget(counter.total(DOCUMENTS), rate)
    output = method.compress(QUERY, DOCUMENTS, budget)
    # Sentences are coarse units: allow under-filling by at most one sentence's worth.
    _check_budget(counter, output, budget, slack=max(counter.count(s) for d in DOCUMENTS for s in split_sentences(d)))
    if budget >= counter.count(split_sentences(DOCUMENTS[2])[0]):
        assert "scatter" in output[2], output  # the answer sentence ranks first
    for original, kept in zip(DOCUMENTS, output):
        for sentence in split_sentences(kept):
            assert sentence in original


@pytest.mark.parametrize("rate", RATES)
def test_embeddings_filter_budget_order_and_head_cut(counter, minilm, rate):
    method = EmbeddingsFilterBaseline(counter, minilm)
    budget = token_budget(counter.total(DOCUMENTS), rate)
    output = method.compress(QUERY, DOCUMENTS, budget)
    _check_budget(counter, output, budget, slack=2)
    assert output[0] == DOCUMENTS[2] or DOCUMENTS[2].startswith(output[0])  # most similar first
    for kept in output[:-1]:
        assert kept in DOCUMENTS  # whole documents, only the last may be a head cut
    assert any(DOCUMENTS[i].startswith(output[-1]) for i in range(len(DOCUMENTS)))


def test_embeddings_filter_keeps_everything_when_budget_allows(counter, minilm):
    method = EmbeddingsFilterBaseline(counter, minilm)
    output = method.compress(QUERY, DOCUMENTS, counter.total(DOCUMENTS))
    assert sorted(output) == sorted(DOCUMENTS)


def test_embeddings_filter_matches_langchain(counter, minilm):
    """The real langchain_classic EmbeddingsFilter and our re-implementation rank alike."""
    pytest.importorskip("langchain_community", reason="langchain-community not installed: only the re-implementation runs")
    real = EmbeddingsFilterBaseline(counter, minilm, use_langchain=True)
    assert real.implementation == "langchain_classic.EmbeddingsFilter"
    _, real_order = real.prepare(QUERY, DOCUMENTS)
    embeddings = minilm.encode([QUERY, *DOCUMENTS])
    assert real_order == reimplemented_embeddings_filter_rank(embeddings[0], embeddings[1:])
    assert real_order[0] == 2


def test_truncate_to_budget(counter):
    head = truncate_to_budget(counter, DOCUMENTS[0], 10)
    assert counter.count(head) <= 10 and DOCUMENTS[0].startswith(head) and head
    longer = " ".join(split_words(DOCUMENTS[0])[: len(split_words(head)) + 1])
    assert counter.count(longer) > 10  # the longest prefix that fits
    assert truncate_to_budget(counter, DOCUMENTS[0], 0) == ""


def test_bad_input_is_rejected_clearly(counter):
    method = RandomWordDrop(counter)
    with pytest.raises(ValueError, match="budget"):
        method.compress(QUERY, DOCUMENTS, -1)
    with pytest.raises(TypeError, match=r"documents\[1\]"):
        method.compress(QUERY, ["ok", 3], 10)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="sequence of strings"):
        method.compress(QUERY, "one string", 10)  # type: ignore[arg-type]
    assert method.compress(QUERY, ["", "   "], 10) == ["", ""]


def test_reimplemented_rank_is_langchain_rule():
    query = np.array([1.0, 0.0])
    documents = np.array([[0.0, 1.0], [2.0, 0.1], [1.0, 1.0]])
    assert reimplemented_embeddings_filter_rank(query, documents) == [1, 2, 0]
