"""Budgets (rate, target_tokens, threshold) and the choice of which units to keep.

Selection is hierarchical, which is what keeps answers at tight budgets:

1. the *global* view ranks sentences across all passages (sentence logit + passage logit), so
   most of the budget goes to the one or two most relevant passages and, inside them, to the
   best sentences;
2. sentences are taken in that order until they hold ``(1 + word_slack)`` times the budget;
3. inside those candidates, units are taken by their gated *keep* score (local word view mixed
   with the global view) until the budget is full: low-value words of the weaker candidate
   sentences go first, words that answer the query stay.

Per-passage floors and user force tokens are reserved before anything else. Token counts are
per unit in the caller's tokenizer; the caller re-counts the joined text and trims if the
tokenizer merges differently across a gap (:func:`trim_to_budget`), so the budget is never
exceeded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """What to keep: a share (``rate``), a token count (``tokens``) or a keep probability (``threshold``)."""

    kind: str  # "rate" | "tokens" | "threshold"
    value: float

    def tokens_for(self, original_tokens: int) -> int | None:
        if self.kind == "rate":
            return int(math.floor(self.value * original_tokens + 1e-9))
        if self.kind == "tokens":
            return int(self.value)
        return None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def resolve_budget(
    rate: float | None, target_tokens: int | None, threshold: float | None, default_rate: float
) -> Budget:
    """Validate the budget arguments (at most one given) and return the budget to apply."""
    given = [name for name, value in (("rate", rate), ("target_tokens", target_tokens), ("threshold", threshold))
             if value is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of rate, target_tokens, threshold (got {', '.join(given)})")
    if rate is not None:
        if not _is_number(rate) or math.isnan(rate) or math.isinf(rate):
            raise ValueError(f"rate must be a finite number in (0, 1], got {rate!r}")
        if not 0 < rate <= 1:
            raise ValueError(f"rate must be in (0, 1] (the share of tokens to keep), got {rate!r}")
        return Budget("rate", float(rate))
    if target_tokens is not None:
        if isinstance(target_tokens, bool) or not _is_number(target_tokens):
            raise ValueError(f"target_tokens must be a non-negative integer, got {target_tokens!r}")
        if isinstance(target_tokens, (float, np.floating)):
            if math.isnan(target_tokens) or math.isinf(target_tokens) or not float(target_tokens).is_integer():
                raise ValueError(f"target_tokens must be a non-negative integer, got {target_tokens!r}")
        if target_tokens < 0:
            raise ValueError(f"target_tokens must be non-negative, got {target_tokens!r}")
        return Budget("tokens", float(int(target_tokens)))
    if threshold is not None:
        if not _is_number(threshold) or math.isnan(threshold) or math.isinf(threshold):
            raise ValueError(f"threshold must be a finite number in [0, 1], got {threshold!r}")
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1] (a keep probability), got {threshold!r}")
        return Budget("threshold", float(threshold))
    return Budget("rate", float(default_rate))


def validate_floor(min_tokens_per_passage: int) -> int:
    if isinstance(min_tokens_per_passage, bool) or not isinstance(min_tokens_per_passage, (int, np.integer)):
        raise ValueError(f"min_tokens_per_passage must be a non-negative integer, got {min_tokens_per_passage!r}")
    if min_tokens_per_passage < 0:
        raise ValueError(f"min_tokens_per_passage must be non-negative, got {min_tokens_per_passage!r}")
    return int(min_tokens_per_passage)


@dataclass
class DocumentScores:
    """Per-document inputs of selection: unit token counts and keep logits, sentence logits."""

    unit_tokens: np.ndarray  # (U,) tokens of each unit in the counting tokenizer
    unit_keep: np.ndarray  # (U,) gated keep logit
    unit_sentence: np.ndarray  # (U,) sentence id of each unit
    sentence_global: np.ndarray  # (S,) global logit (sentence + passage)
    forced: np.ndarray  # (U,) bool


def _take_best_until(order: np.ndarray, tokens: np.ndarray, keep: np.ndarray, budget: int) -> int:
    """Keep units in ``order`` that still fit into ``budget``; returns the tokens used."""
    used = 0
    for u in order:
        if keep[u]:
            continue
        cost = int(tokens[u])
        if used + cost <= budget:
            keep[u] = True
            used += cost
    return used


def select_units(
    docs: Sequence[DocumentScores],
    budget: Budget,
    *,
    min_tokens_per_passage: int = 0,
    word_slack: float = 0.25,
) -> list[np.ndarray]:
    """Boolean keep mask per document (see the module docstring)."""
    keeps = [np.zeros(d.unit_tokens.shape[0], dtype=bool) for d in docs]
    totals = [int(d.unit_tokens.sum()) for d in docs]
    original = sum(totals)

    if budget.kind == "threshold":
        for d, keep in zip(docs, keeps):
            if keep.size:
                keep |= 1.0 / (1.0 + np.exp(-d.unit_keep)) >= budget.value
                keep |= d.forced
        _apply_floor(docs, keeps, min_tokens_per_passage)
        return keeps

    limit = budget.tokens_for(original)
    assert limit is not None
    if limit >= original:
        for keep in keeps:
            keep[:] = True
        return keeps
    used = _apply_floor(docs, keeps, min_tokens_per_passage)
    if used > limit:
        need = sum(min(min_tokens_per_passage, t) for t in totals)
        raise ValueError(
            f"min_tokens_per_passage={min_tokens_per_passage} needs about {need} tokens over {len(docs)} passages, "
            f"more than the budget of {limit} tokens; lower the floor or raise the budget"
        )
    # Force tokens next, best-scoring first; the budget still wins.
    forced_units = [(float(d.unit_keep[u]), i, int(u)) for i, d in enumerate(docs) for u in np.flatnonzero(d.forced)]
    forced_units.sort(reverse=True)
    skipped = 0
    for _, i, u in forced_units:
        if keeps[i][u]:
            continue
        cost = int(docs[i].unit_tokens[u])
        if used + cost <= limit:
            keeps[i][u] = True
            used += cost
        else:
            skipped += 1
    if skipped:
        logger.warning("%d force-token occurrences did not fit into the %d-token budget and were dropped", skipped, limit)

    # Global view: rank every sentence of every document.
    sentence_rank: list[tuple[float, int, int]] = []
    for i, d in enumerate(docs):
        sentence_rank.extend((float(score), i, s) for s, score in enumerate(d.sentence_global))
    sentence_rank.sort(key=lambda item: -item[0])
    sentence_units: list[list[np.ndarray]] = []
    for d in docs:
        if d.unit_sentence.size:
            bounds = np.flatnonzero(np.diff(d.unit_sentence)) + 1
            sentence_units.append(np.split(np.arange(d.unit_sentence.size), bounds))
        else:
            sentence_units.append([])

    remaining = limit - used
    position = 0
    while remaining > 0 and position < len(sentence_rank):
        # 2. candidates: sentences in global order worth (1 + slack) x what is left.
        target = remaining * (1.0 + word_slack)
        candidates: list[tuple[int, np.ndarray]] = []
        gathered = 0
        while position < len(sentence_rank) and gathered < target:
            _, i, s = sentence_rank[position]
            units = sentence_units[i][s]
            units = units[~keeps[i][units]]
            if units.size:
                candidates.append((i, units))
                gathered += int(docs[i].unit_tokens[units].sum())
            position += 1
        if not candidates:
            break
        # 3. inside the candidates: best keep scores first, while they fit.
        pool_doc = np.concatenate([np.full(u.size, i) for i, u in candidates])
        pool_unit = np.concatenate([u for _, u in candidates])
        pool_score = np.concatenate([docs[i].unit_keep[u] for i, u in candidates])
        order = np.argsort(-pool_score, kind="stable")
        for k in order:
            i, u = int(pool_doc[k]), int(pool_unit[k])
            cost = int(docs[i].unit_tokens[u])
            if cost <= remaining:
                keeps[i][u] = True
                remaining -= cost
            if remaining <= 0:
                break
    return keeps


def _apply_floor(docs: Sequence[DocumentScores], keeps: list[np.ndarray], floor: int) -> int:
    """Reserve each passage's best units up to ``floor`` tokens; returns tokens kept so far."""
    used = 0
    for d, keep in zip(docs, keeps):
        if floor > 0 and keep.size:
            target = min(floor, int(d.unit_tokens.sum()))
            have = int(d.unit_tokens[keep].sum())
            if have < target:
                # Best sentences first, then the best words in them (the same order as selection).
                order = np.lexsort((-d.unit_keep, -d.sentence_global[d.unit_sentence]))
                for u in order:
                    if have >= target:
                        break
                    if not keep[u]:
                        keep[u] = True
                        have += int(d.unit_tokens[u])
        used += int(d.unit_tokens[keep].sum())
    return used


def trim_to_budget(
    counts: list[int], keeps: list[np.ndarray], docs: Sequence[DocumentScores], limit: int, protected_masks: list[np.ndarray]
) -> list[int]:
    """Docs to re-join after dropping the lowest-keep units until the recounted total fits ``limit``.

    ``counts`` are the true token counts of the joined texts; units in ``protected_masks``
    (floors) are dropped last. Returns the indices of the documents that changed.
    """
    excess = sum(counts) - limit
    if excess <= 0:
        return []
    pool = []
    for i, (d, keep) in enumerate(zip(docs, keeps)):
        for u in np.flatnonzero(keep):
            pool.append((bool(protected_masks[i][u]), float(d.unit_keep[u]), i, int(u)))
    pool.sort()
    changed: set[int] = set()
    removed = 0
    for _, _, i, u in pool:
        if removed >= excess:
            break
        keeps[i][u] = False
        removed += max(1, int(docs[i].unit_tokens[u]))
        changed.add(i)
    return sorted(changed)
