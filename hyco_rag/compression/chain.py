"""Evidence chains: multi-hop scoring conditioned on the evidence found so far.

A multi-hop question ("Who is the father of the director of *Film X*?") names only its first
hop; the passage that answers it is about an entity the question never mentions (the
director). Multi-hop retrievers (MDR, IRCoT, Baleen) therefore condition the next hop on what
the previous one found. The compressor does the same with its own scores:

1. score every passage for the question (the usual single pass);
2. take the best sentence as this hop's *evidence* and build the next hop's query: the
   question followed by the evidence's *bridge terms* (names, numbers and other content words
   the question does not already contain);
3. score every passage again for that query, and merge: a unit's score is the best it got in
   any hop, so text relevant to either hop competes for the budget;
4. *coverage*: each hop's evidence sentence comes from a different passage and is ranked
   first, so every hop's passage keeps its evidence when it fits, instead of the first hop's
   passage taking the whole budget.

Each hop is one more scoring pass over the same chunks (the cost is measured in
``docs/compression.md``); ``hops=1`` (the default) is the plain single pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hyco_rag.compression.words import Segmentation

#: Most hops a request may ask for; each is one scoring pass.
MAX_HOPS = 4
#: Bridge terms appended to the question per hop (fewer where the query would pass ``max_query_tokens``).
MAX_BRIDGE_TERMS = 12
#: Evidence sentences rank above every other sentence by this much (coverage).
COVERAGE_BONUS = 1.0e3

_WORD = re.compile(r"[^\W_](?:[\w'’.-]*[^\W_])?", re.UNICODE)
_STOPWORDS = frozenset(
    """a an and are as at be been being but by did do does for from had has have he her hers him his
    how i in into is it its of on or our she so than that the their them then there these they
    this those to was we were what when where which while who whom whose why will with would you
    your also after before during about over under between among other such only not no yes""".split()
)


class ScoredDocument(Protocol):
    """What the chain reads and rewrites of a document's scores (the compressor's ``_DocScores``)."""

    unit_keep: np.ndarray
    sentence_global: np.ndarray
    relevance: float


@dataclass(frozen=True)
class Evidence:
    """One hop's evidence: sentence ``sentence`` of document ``doc``, and the terms it bridges to."""

    hop: int
    doc: int
    sentence: int
    text: str
    bridge_terms: tuple[str, ...]


def validate_hops(hops: Any) -> int:
    if isinstance(hops, bool) or not isinstance(hops, (int, np.integer)):
        raise ValueError(f"hops must be an integer in [1, {MAX_HOPS}], got {hops!r}")
    if not 1 <= hops <= MAX_HOPS:
        raise ValueError(f"hops must be in [1, {MAX_HOPS}] (one scoring pass per hop), got {hops!r}")
    return int(hops)


def sentence_text(seg: Segmentation, sentence: int) -> str:
    units = np.flatnonzero(seg.sentence == sentence)
    if not units.size:
        return ""
    return seg.text[int(seg.starts[units[0]]) : int(seg.ends[units[-1]])]


def bridge_terms(evidence: str, query: str, limit: int = MAX_BRIDGE_TERMS) -> tuple[str, ...]:
    """Content words of ``evidence`` that ``query`` lacks, names and numbers first.

    These are what the next hop has to find: the evidence of hop one names the bridge entity
    (the director, the capital, the year) that the question does not.
    """
    asked = {w.lower() for w in _WORD.findall(query)}
    named: list[str] = []
    other: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(evidence):
        key = word.lower()
        if key in asked or key in seen or key in _STOPWORDS or len(word) < 2 and not word.isdigit():
            continue
        seen.add(key)
        (named if word[0].isupper() or any(c.isdigit() for c in word) else other).append(word)
    return tuple((named + other)[:limit])


def hop_query(query: str, chain: Sequence[Evidence], fits: Callable[[str], bool] | None = None) -> str:
    """The question followed by the bridge terms of every hop so far.

    With ``fits`` (e.g. "at most ``max_query_tokens`` encoder tokens"), the last terms are
    dropped until the query fits, so the scorer never cuts a hop query mid-term; the question
    itself is never shortened here.
    """
    terms = [term for evidence in chain for term in evidence.bridge_terms]
    while True:
        text = " ".join([query.strip(), *terms]).strip()
        if not terms or fits is None or fits(text):
            return text
        terms.pop()


def best_sentence(scores: Sequence[ScoredDocument], exclude: set[int]) -> tuple[int, int] | None:
    """(document, sentence) with the highest global score, outside the ``exclude`` documents."""
    best: tuple[float, int, int] | None = None
    for d, doc in enumerate(scores):
        if d in exclude or not doc.sentence_global.size:
            continue
        s = int(np.argmax(doc.sentence_global))
        value = float(doc.sentence_global[s])
        if best is None or value > best[0]:
            best = (value, d, s)
    return None if best is None else (best[1], best[2])


def next_evidence(
    hop: int, query: str, segs: Sequence[Segmentation], scores: Sequence[ScoredDocument], chain: Sequence[Evidence]
) -> Evidence | None:
    """This hop's evidence: the best sentence of a document no earlier hop used."""
    found = best_sentence(scores, {e.doc for e in chain})
    if found is None:
        return None
    doc, sentence = found
    text = sentence_text(segs[doc], sentence)
    asked = " ".join([query, *(e.text for e in chain)])
    return Evidence(hop, doc, sentence, text, bridge_terms(text, asked))


def merge_hop(scores: Sequence[ScoredDocument], hop_scores: Sequence[ScoredDocument]) -> None:
    """Keep, per unit and sentence, the best score any hop gave it (in place into ``scores``)."""
    for doc, hop in zip(scores, hop_scores):
        doc.unit_keep = np.maximum(doc.unit_keep, hop.unit_keep)
        doc.sentence_global = np.maximum(doc.sentence_global, hop.sentence_global)
        doc.relevance = max(doc.relevance, hop.relevance)


def cover(scores: Sequence[ScoredDocument], segs: Sequence[Segmentation], chain: Sequence[Evidence]) -> None:
    """Rank each hop's evidence sentence first (earlier hops first), its units included."""
    for evidence in chain:
        doc = scores[evidence.doc]
        bonus = COVERAGE_BONUS * (len(chain) - evidence.hop)
        doc.sentence_global = doc.sentence_global.copy()
        doc.sentence_global[evidence.sentence] += bonus
        units = segs[evidence.doc].sentence == evidence.sentence
        doc.unit_keep = doc.unit_keep.copy()
        doc.unit_keep[units] += bonus
