"""Evidence chains (``hops`` > 1): bridge terms, coverage, budgets and bad input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from hyco_rag.compression.chain import (
    COVERAGE_BONUS,
    Evidence,
    bridge_terms,
    cover,
    hop_query,
    merge_hop,
    next_evidence,
    validate_hops,
)
from hyco_rag.compression.words import segment

QUESTION = "When was the director of the film King of the Sierras born?"
DOCS = [
    "Ian Barry is an Australian director of film and television. He directed several series.",
    "King of the Sierras is a 1938 American western directed by Arthur Rosson. It was distributed by "
    "Grand National Pictures.",
    "The Sierra Nevada is a mountain range in the Western United States. Its highest peak is Mount Whitney.",
    "Arthur Rosson (24 August 1886 - 17 June 1960) was an English film director. He worked in Hollywood.",
    "Dana Cohen (born March 3, 1981) is the director of the Israeli film school. She studied in London.",
]


@dataclass
class _Scores:
    unit_keep: np.ndarray
    sentence_global: np.ndarray
    relevance: float


def test_bridge_terms_are_new_names_and_numbers_first():
    terms = bridge_terms("King of the Sierras is a 1938 western directed by Arthur Rosson.", QUESTION)
    assert terms[:3] == ("1938", "Arthur", "Rosson")
    assert "western" in terms  # other content words after the names
    assert not {"King", "Sierras", "the", "directed"} & set(terms[:3])
    lowered = {t.lower() for t in terms}
    assert not lowered & {"king", "of", "the", "sierras", "is", "a", "by"}
    assert bridge_terms("the of and", "anything") == ()
    assert len(bridge_terms(" ".join(f"Name{i}" for i in range(40)), "")) == 12


def test_hop_query_appends_each_hops_terms():
    chain = [Evidence(0, 1, 0, "x", ("Arthur", "Rosson")), Evidence(1, 3, 0, "y", ("1886",))]
    assert hop_query(" Who? ", chain) == "Who? Arthur Rosson 1886"
    assert hop_query("Who?", []) == "Who?"
    # terms that do not fit are dropped from the end, whole; the question is never cut
    assert hop_query("Who?", chain, fits=lambda text: len(text.split()) <= 3) == "Who? Arthur Rosson"
    assert hop_query("Who is it?", chain, fits=lambda text: False) == "Who is it?"


def test_a_long_hop_query_is_not_cut_by_the_scorer(compressor, caplog):
    import logging

    question = (
        "Please tell me, as precisely as you possibly can and giving the complete date with day and month, "
        "in which year exactly was the person born who directed the film King of the Sierras?"
    )  # 38 encoder tokens: with hop 1's bridge terms it would pass max_query_tokens (48)
    with caplog.at_level(logging.WARNING, logger="hyco_rag.compression.features"):
        result = compressor.compress(question, DOCS, rate=0.5, hops=2)
    assert len(result.stats["evidence"]) == 2
    assert "scoring with its first" not in caplog.text


@pytest.mark.parametrize("bad", [0, 5, -1, 1.5, True, "2", None])
def test_validate_hops_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="hops"):
        validate_hops(bad)


def test_next_evidence_skips_used_documents_and_cover_ranks_every_hop_first():
    segs = [segment(text) for text in DOCS[:3]]
    scores = [
        _Scores(np.zeros(len(s)), np.array([0.5, -1.0])[: s.num_sentences], 0.5) for s in segs
    ]
    scores[1].sentence_global = np.array([3.0, 0.0])
    first = next_evidence(0, QUESTION, segs, scores, [])
    assert first is not None and (first.doc, first.sentence) == (1, 0)
    assert "Rosson" in first.bridge_terms
    second = next_evidence(1, QUESTION, segs, scores, [first])
    assert second is not None and second.doc != 1
    before = [s.sentence_global.copy() for s in scores]
    cover(scores, segs, [first, second])
    assert scores[1].sentence_global[0] == pytest.approx(before[1][0] + 2 * COVERAGE_BONUS)
    assert scores[second.doc].sentence_global[0] == pytest.approx(before[second.doc][0] + COVERAGE_BONUS)
    units = segs[1].sentence == 0
    assert (scores[1].unit_keep[units] >= 2 * COVERAGE_BONUS).all() and (scores[1].unit_keep[~units] == 0).all()


def test_merge_hop_keeps_the_best_score_per_unit():
    a = _Scores(np.array([1.0, -2.0]), np.array([0.0]), 0.2)
    merge_hop([a], [_Scores(np.array([-1.0, 3.0]), np.array([-5.0]), 0.9)])
    assert a.unit_keep.tolist() == [1.0, 3.0] and a.sentence_global.tolist() == [0.0] and a.relevance == 0.9


def test_second_hop_finds_the_bridge_passage(compressor, reader_tokenizer):
    single = compressor.compress(QUESTION, DOCS, target_tokens=70, target_tokenizer=reader_tokenizer)
    chained = compressor.compress(QUESTION, DOCS, target_tokens=70, target_tokenizer=reader_tokenizer, hops=2)
    assert "hops" not in single.stats and "evidence" not in single.stats
    evidence = chained.stats["evidence"]
    assert [e["hop"] for e in evidence] == [1, 2]
    assert len({e["passage"] for e in evidence}) == 2  # each hop from its own passage
    assert evidence[0]["passage"] == 1 and "Rosson" in evidence[0]["bridge_terms"]
    assert evidence[1]["passage"] == 3
    assert "1886" in chained.passages[3].text  # the answer, in the passage only the bridge names
    assert chained.stats["compressed_tokens"] <= 70
    assert chained.stats["fine_scored_tokens"] > single.stats["fine_scored_tokens"]  # one more pass
    for passage, original in zip(chained.passages, DOCS):
        assert passage.text.split() == [w for a, b in passage.kept_spans for w in original[a:b].split()]


def test_hops_in_batches_match_single_calls(compressor):
    expected = [compressor.compress(QUESTION, DOCS, rate=0.3, hops=h).texts for h in (1, 2)]
    batched = compressor.compress_batch([QUESTION, QUESTION], [DOCS, DOCS], rate=0.3, hops=2)
    assert [r.texts for r in batched] == [expected[1]] * 2
    mixed = [compressor.compress(QUESTION, DOCS, rate=0.3, hops=1), compressor.compress(QUESTION, DOCS[:1], rate=0.3, hops=3)]
    assert mixed[0].texts == expected[0]
    assert len(mixed[1].stats["evidence"]) == 1  # one passage: nothing further to follow


def test_compress_rejects_bad_hops(compressor):
    with pytest.raises(ValueError, match="hops"):
        compressor.compress(QUESTION, DOCS, rate=0.3, hops=0)
