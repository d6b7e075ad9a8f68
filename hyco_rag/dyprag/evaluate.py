"""Moved: the quick post-training check now lives in :mod:`hyco_rag.evaluation.parametric`.

``python -m hyco_rag.cli.train_dyprag eval`` runs :func:`evaluate_modes` below, a thin wrapper
over :func:`hyco_rag.evaluation.parametric.run_squad` (SQuAD v1.1 dev questions, gold passage,
the two-shot short-answer prompt, every mode beside its controls).  Kept so existing imports work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hyco_rag.evaluation.parametric import DeltaReader, DeltaSource, SquadItem, run_squad, squad_items

EVAL_MODES = ("none", "rag", "format_only", "dyprag", "dyprag_shuffled", "combine", "combine_shuffled")


def squad_gold_examples(count: int, seed: int = 0) -> list[SquadItem]:
    """``count`` SQuAD v1.1 dev questions sampled across all articles, gold passage first."""
    return squad_items(count, seed=seed, distractors=0)


def evaluate_modes(
    reader: DeltaReader,
    source: DeltaSource,
    items: Sequence[SquadItem],
    modes: Sequence[str] = EVAL_MODES,
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per mode (gold-passage setting); unknown modes raise ``ValueError``."""
    unknown = set(modes) - set(EVAL_MODES)
    if unknown:
        raise ValueError(f"unknown eval modes {sorted(unknown)}; expected a subset of {EVAL_MODES}")
    return run_squad(reader, source, items, list(modes), progress=progress)
