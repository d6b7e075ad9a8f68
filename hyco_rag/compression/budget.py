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


def resolve_budget(rate: float | None, target_tokens: int | None, threshold: float | None, default_rate: float) -> Budget:
    """Validate the budget arguments (at most one given) and return the budget to apply."""
    given = [
        name for name, value in (("rate", rate), ("target_tokens", target_tokens), ("threshold", threshold)) if value is not None
    ]
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
            raise ValueError(f"target_tokens must be a positive integer, got {target_tokens!r}")
        if isinstance(target_tokens, (float, np.floating)):
            if math.isnan(target_tokens) or math.isinf(target_tokens) or not float(target_tokens).is_integer():
                raise ValueError(f"target_tokens must be a positive integer, got {target_tokens!r}")
        if target_tokens < 1:
            raise ValueError(
                f"target_tokens must be a positive integer, got {target_tokens!r} (a budget of 0 tokens would return "
                "empty context; leave the documents out instead)"
            )
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
    unit_piece: np.ndarray | None = None  # (U,) piece id (clause/sentence); None: every unit alone
    protected: np.ndarray | None = None  # (U,) bool, atomic structured units (code, JSON, table, URL)


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
    reserved: list[np.ndarray] | None = None,
    min_fragment_tokens: int = 0,
) -> list[np.ndarray]:
    """Boolean keep mask per document (see the module docstring).

    ``min_fragment_tokens``: a passage whose selected text (beyond its reserved units) is
    shorter than this is dropped, and its budget goes to the next best sentences, so no
    passage survives as a one-word stub. ``reserved``: when a list is given, it receives one
    mask per document of the units kept as *reserved* (the per-passage floor and the force-token occurrences that fit). They are
    what :func:`trim_to_budget` never drops.
    """
    keeps = [np.zeros(d.unit_tokens.shape[0], dtype=bool) for d in docs]

    def _reserve() -> None:
        if reserved is not None:
            reserved[:] = [k.copy() for k in keeps]

    totals = [int(d.unit_tokens.sum()) for d in docs]
    original = sum(totals)

    if budget.kind == "threshold":
        for d, keep in zip(docs, keeps):
            if keep.size:
                keep |= 1.0 / (1.0 + np.exp(-np.clip(d.unit_keep, -60.0, 60.0))) >= budget.value
                keep |= d.forced
        _apply_floor(docs, keeps, min_tokens_per_passage)
        if reserved is not None:
            floors = [np.zeros_like(k) for k in keeps]
            _apply_floor(docs, floors, min_tokens_per_passage)
            reserved[:] = [f | d.forced for f, d in zip(floors, docs)]
        return keeps

    limit = budget.tokens_for(original)
    assert limit is not None
    if limit >= original:
        for keep in keeps:
            keep[:] = True
        _reserve()
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
    _reserve()

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

    base_keeps = [k.copy() for k in keeps]  # reserved so far (floors, force tokens)
    banned: set[int] = set()
    for _ in range(4):  # passes: a passage left with a stub is dropped and its budget re-spent
        remaining = limit - sum(int(d.unit_tokens[k].sum()) for d, k in zip(docs, keeps))
        _fill(docs, keeps, sentence_rank, sentence_units, remaining, word_slack, banned)
        stubs = _stub_passages(docs, keeps, base_keeps, min_fragment_tokens, banned)
        if not stubs:
            break
        for i in stubs:
            keeps[i][:] = base_keeps[i]
            banned.add(i)
    return keeps


def _piece_groups(d: DocumentScores, units: np.ndarray) -> list[np.ndarray]:
    """``units`` (sorted, one sentence) split by piece id (clause / word / sentence)."""
    if d.unit_piece is None or units.size <= 1:
        return [units[k : k + 1] for k in range(units.size)] if d.unit_piece is None else [units]
    ids = d.unit_piece[units]
    bounds = np.flatnonzero(np.diff(ids)) + 1
    return np.split(units, bounds)


def _fill(docs, keeps, sentence_rank, sentence_units, remaining: int, word_slack: float, banned: set[int]) -> None:
    """Steps 2-3 of the module docstring, by pieces, into ``keeps`` (in place)."""
    position = 0
    while remaining > 0 and position < len(sentence_rank):
        # 2. candidates: sentences in global order worth (1 + slack) x what is left.
        target = remaining * (1.0 + word_slack)
        pool: list[tuple[float, int, int, np.ndarray, int]] = []  # (-score, order, doc, units, cost)
        gathered = 0
        while position < len(sentence_rank) and gathered < target:
            _, i, s = sentence_rank[position]
            position += 1
            if i in banned:
                continue
            d = docs[i]
            units = sentence_units[i][s]
            units = units[~keeps[i][units]]
            if not units.size:
                continue
            for group in _piece_groups(d, units):
                cost = int(d.unit_tokens[group].sum())
                values = d.unit_keep[group]
                # A piece is as good as its best words (an answer in a long clause must not be
                # averaged away) tempered by the rest of it.
                score = 0.5 * (float(values.max()) + float(values.mean()))
                if d.protected is not None and group.size == 1 and d.protected[group[0]]:
                    # A structured block (code, JSON, table) competes as the sentence it stands for.
                    score = max(score, float(d.sentence_global[s]))
                pool.append((-score, len(pool), i, group, cost))
                gathered += cost
        if not pool:
            break
        # 3. inside the candidates: best keep scores first, while they fit.
        pool.sort(key=lambda item: (item[0], item[1]))
        skipped: tuple[int, np.ndarray] | None = None
        for _, _, i, group, cost in pool:
            if cost <= remaining:
                keeps[i][group] = True
                remaining -= cost
            elif skipped is None:
                skipped = (i, group)  # the best piece that did not fit
            if remaining <= 0:
                break
        if remaining > 0 and skipped is not None:
            # The best piece that is too long for what is left: its best words, rather than
            # losing it to weaker pieces (at most one partial piece per round).
            i, group = skipped
            for u in group[np.argsort(-docs[i].unit_keep[group], kind="stable")]:
                cost = int(docs[i].unit_tokens[u])
                if cost <= remaining:
                    keeps[i][u] = True
                    remaining -= cost


def _stub_passages(docs, keeps, base_keeps, min_tokens: int, banned: set[int]) -> list[int]:
    """Passages whose selected (not reserved) text is a stub: under ``min_tokens`` tokens."""
    if min_tokens <= 0:
        return []
    out = []
    for i, (d, keep, base) in enumerate(zip(docs, keeps, base_keeps)):
        if i in banned:
            continue
        chosen = keep & ~base
        used = int(d.unit_tokens[chosen].sum())
        if not 0 < used < min_tokens or keep.all():
            continue
        # A short but complete sentence ("It rained.") is kept; a fragment of one is a stub.
        sentences = np.unique(d.unit_sentence[chosen])
        if any(keep[d.unit_sentence == s].all() for s in sentences):
            continue
        out.append(i)
    return out


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


class BudgetError(ValueError):
    """The reserved units (floors, force tokens) alone exceed the budget once re-counted."""


def trim_to_budget(
    counts: list[int], keeps: list[np.ndarray], docs: Sequence[DocumentScores], limit: int, protected_masks: list[np.ndarray]
) -> list[int]:
    """Docs to re-join after dropping the lowest-keep units until the recounted total fits ``limit``.

    ``counts`` are the true token counts of the joined texts. Units in ``protected_masks``
    (floors, force tokens) are reserved: they are never dropped. One call drops units worth
    at least the excess by their per-unit counts; the caller re-joins, re-counts and calls
    again until nothing is left to change (see :func:`fit_to_budget`). Returns the indices of
    the documents that changed (empty: already fits, or only reserved units are left).
    """
    excess = sum(counts) - limit
    if excess <= 0:
        return []
    pool = []
    for i, (d, keep) in enumerate(zip(docs, keeps)):
        for u in np.flatnonzero(keep & ~protected_masks[i]):
            pool.append((float(d.unit_keep[u]), i, int(u)))
    pool.sort()
    changed: set[int] = set()
    removed = 0
    for _, i, u in pool:
        if removed >= excess:
            break
        keeps[i][u] = False
        removed += max(1, int(docs[i].unit_tokens[u]))
        changed.add(i)
    return sorted(changed)


def fit_to_budget(
    counts: list[int],
    keeps: list[np.ndarray],
    docs: Sequence[DocumentScores],
    limit: int,
    protected_masks: list[np.ndarray],
    rejoin,
) -> None:
    """Trim and re-count until the joined texts fit ``limit`` exactly, or raise.

    ``rejoin(d)`` re-joins document ``d`` from ``keeps[d]`` and returns its true token count;
    ``counts`` is updated in place. Every round drops at least one unit, so this ends; when
    only reserved units are left and they still exceed the budget it raises
    :class:`BudgetError` instead of silently returning more tokens than asked for.
    """
    while sum(counts) > limit:
        changed = trim_to_budget(counts, keeps, docs, limit, protected_masks)
        if not changed:
            raise BudgetError(
                f"the reserved units (min_tokens_per_passage floors and force tokens) take {sum(counts)} tokens once "
                f"re-joined and re-counted, more than the budget of {limit}; lower the floor, drop force tokens "
                "or raise the budget"
            )
        for d in changed:
            counts[d] = rejoin(d)
