"""SQuAD-style QA metrics: normalised exact match, token F1, and answer recall.

The normalisation is the official SQuAD v1.1 script's (lower-case, strip punctuation and the
articles a/an/the, collapse whitespace), so our numbers compare with published ones.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD v1.1)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not prediction_tokens or not gold_tokens:
        return float(prediction_tokens == gold_tokens)
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _best(metric, prediction: str, golds: Sequence[str]) -> float:
    if not golds:
        raise ValueError("at least one gold answer is needed to score a prediction")
    return max(metric(prediction, gold) for gold in golds)


def best_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """EM against the best-matching of several gold answers (as SQuAD scores)."""
    return _best(exact_match, prediction, golds)


def best_f1(prediction: str, golds: Sequence[str]) -> float:
    """Token F1 against the best-matching of several gold answers."""
    return _best(token_f1, prediction, golds)


def answer_in_text(text: str, golds: Sequence[str]) -> bool:
    """Does any gold answer survive in ``text`` (normalised substring match)?

    Used as *answer recall* for compressors and as DPR-style "has answer" accuracy.
    """
    haystack = f" {normalize_answer(text)} "
    return any(f" {normalize_answer(gold)} " in haystack for gold in golds if normalize_answer(gold))


def qa_scores(predictions: Iterable[str], golds: Iterable[Sequence[str]]) -> dict[str, float]:
    """Mean EM and F1 in percent over a set of predictions, plus the count."""
    em = f1 = 0.0
    count = 0
    for prediction, answers in zip(predictions, golds, strict=True):
        em += best_exact_match(prediction, answers)
        f1 += best_f1(prediction, answers)
        count += 1
    if count == 0:
        return {"em": 0.0, "f1": 0.0, "count": 0}
    return {"em": 100 * em / count, "f1": 100 * f1 / count, "count": count}
