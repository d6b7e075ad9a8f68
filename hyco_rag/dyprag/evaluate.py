"""A quick QA check of a translator: SQuAD v1.1 dev questions with their gold passage.

Not the benchmark (``benchmarks/parametric_qa.py`` covers distractors, PRAG and knowledge
conflicts); this is the sanity check run after training.  Besides the four modes it scores
two controls that tell passage-specific knowledge from a generic "answer like SQuAD" delta:

* ``dyprag_shuffled`` / ``combine_shuffled``: every question gets the delta of *another*
  question's gold passage.  If these score like ``dyprag`` / ``combine``, the gain comes from
  the delta's passage-independent part, not from the passage.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from hyco_rag.metrics import qa_scores

if TYPE_CHECKING:
    from hyco_rag.data import QAExample
    from hyco_rag.dyprag.runtime import ParametricRAG

logger = logging.getLogger(__name__)

EVAL_MODES = ("none", "rag", "dyprag", "combine", "dyprag_shuffled", "combine_shuffled")


def squad_gold_examples(count: int, seed: int = 0) -> list[QAExample]:
    """``count`` SQuAD v1.1 dev questions sampled across all articles, gold passage only."""
    from hyco_rag.data import SQUAD_DEV, load_squad

    examples = load_squad(SQUAD_DEV, num_distractors=0, seed=seed)
    return random.Random(seed).sample(examples, min(count, len(examples)))


def evaluate_modes(
    rag: ParametricRAG,
    examples: Sequence[QAExample],
    modes: Sequence[str] = EVAL_MODES,
    *,
    progress: bool = True,
) -> list[dict[str, object]]:
    """EM/F1, tokens and time per question for each mode; one row per mode."""
    from tqdm.auto import tqdm

    unknown = set(modes) - set(EVAL_MODES)
    if unknown:
        raise ValueError(f"unknown eval modes {sorted(unknown)}; expected a subset of {EVAL_MODES}")
    questions = [e.question for e in examples]
    documents = [[p.text for p in e.passages] for e in examples]
    golds = [e.answers for e in examples]
    config = replace(rag.generator.config, stop_at_newline=True)
    deltas = None
    translate_time = 0.0
    if any(m in modes for m in ("dyprag", "combine", "dyprag_shuffled", "combine_shuffled")):
        rag.encoder._cache.clear()  # time the encoding honestly
        start = time.perf_counter()
        deltas = [rag.deltas_for(docs) for docs in tqdm(documents, desc="deltas", disable=not progress)]
        translate_time = (time.perf_counter() - start) / max(1, sum(len(d) for d in documents))
    rows = []
    for mode in modes:
        base = mode.replace("_shuffled", "")
        row_deltas = None
        if mode.endswith("_shuffled"):
            row_deltas = deltas[1:] + deltas[:1]  # type: ignore[index]
        elif base in ("dyprag", "combine"):
            row_deltas = deltas
        start = time.perf_counter()
        answers = []
        step = config.batch_size
        for s in tqdm(range(0, len(questions), step), desc=mode, disable=not progress):
            answers += rag.answer_batch(
                questions[s : s + step],
                documents[s : s + step],
                mode=base,
                deltas=row_deltas[s : s + step] if row_deltas is not None else None,
                config=config,
            )
        seconds = time.perf_counter() - start
        scores = qa_scores([a.text for a in answers], golds)
        rows.append(
            {
                "mode": mode,
                "em": scores["em"],
                "f1": scores["f1"],
                "prompt_tokens": sum(a.prompt_tokens for a in answers) / len(answers),
                "context_tokens": sum(a.context_tokens for a in answers) / len(answers),
                "generate_s_per_q": seconds / len(answers),
                "delta_s_per_passage": translate_time if base in ("dyprag", "combine") else 0.0,
                "count": scores["count"],
            }
        )
        logger.info("%s: EM %.1f F1 %.1f", mode, scores["em"], scores["f1"])
    return rows
