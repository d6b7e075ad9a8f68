"""Quick self-evaluation: answer recall (does a gold answer survive compression?) at several rates.

Used after training and by ``hyco-rag train compressor --eval``. The benchmark
(``benchmarks/compression_qa.py``) is the full comparison with a reader and peers; this is the
fast check that a training run did what it should.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from hyco_rag.data import QAExample
from hyco_rag.metrics import answer_in_text

logger = logging.getLogger(__name__)

DEFAULT_RATES = (1 / 2, 1 / 4, 1 / 8, 1 / 10)


def answer_recall(
    compressor: Any,
    examples: Sequence[QAExample],
    rates: Sequence[float] = DEFAULT_RATES,
    *,
    target_tokenizer: Any = None,
    progress: bool = True,
    granularities: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Share of examples whose gold answer survives, per rate, plus achieved ratios and speed.

    With ``granularities`` (e.g. ``("word", "clause", "sentence")``) the same scores are also
    selected at each granularity: ``by_granularity[g]`` holds recall, achieved ratio and mean
    kept pieces' words (a readability proxy: words per kept contiguous span).
    """
    if granularities:
        return _recall_by_granularity(compressor, examples, rates, granularities, target_tokenizer, progress)
    from tqdm.auto import tqdm

    hits = {rate: 0 for rate in rates}
    kept = {rate: 0 for rate in rates}
    original = 0
    encoder_tokens = 0
    started = time.perf_counter()
    for example in tqdm(examples, desc="answer recall", unit="q", disable=not progress):
        documents = [p.text for p in example.passages]
        results = compressor._compress_at_rates(example.question, documents, rates, target_tokenizer=target_tokenizer)
        for rate, result in zip(rates, results):
            hits[rate] += answer_in_text("\n".join(result.texts), example.answers)
            kept[rate] += result.stats["compressed_tokens"]
        original += results[0].stats["original_tokens"]
        encoder_tokens += results[0].stats["encoder_tokens"]
    n = max(1, len(examples))
    return {
        "questions": len(examples),
        "recall": {f"{rate:.4g}": hits[rate] / n for rate in rates},
        "achieved_ratio": {f"{rate:.4g}": kept[rate] / max(1, original) for rate in rates},
        "seconds": time.perf_counter() - started,
    }


def _recall_by_granularity(compressor, examples, rates, granularities, target_tokenizer, progress) -> dict[str, Any]:
    from tqdm.auto import tqdm

    cells = [(g, r) for g in granularities for r in rates]
    hits = dict.fromkeys(cells, 0)
    kept = dict.fromkeys(cells, 0)
    span_words = dict.fromkeys(cells, 0)
    spans = dict.fromkeys(cells, 0)
    original = 0
    started = time.perf_counter()
    for example in tqdm(examples, desc="answer recall by granularity", unit="q", disable=not progress):
        documents = [p.text for p in example.passages]
        results = compressor._compress_at_rates(
            example.question, documents, rates, target_tokenizer=target_tokenizer, granularities=granularities
        )
        for cell, result in zip(cells, results):
            hits[cell] += answer_in_text("\n".join(result.texts), example.answers)
            kept[cell] += result.stats["compressed_tokens"]
            for passage in result.passages:
                for start, end in passage.kept_spans:
                    span_words[cell] += len(documents[passage.index][start:end].split())
                    spans[cell] += 1
        original += results[0].stats["original_tokens"]
    n = max(1, len(examples))
    return {
        "questions": len(examples),
        "by_granularity": {
            g: {
                "recall": {f"{r:.4g}": hits[(g, r)] / n for r in rates},
                "achieved_ratio": {f"{r:.4g}": kept[(g, r)] / max(1, original) for r in rates},
                "words_per_kept_span": {f"{r:.4g}": span_words[(g, r)] / max(1, spans[(g, r)]) for r in rates},
            }
            for g in granularities
        },
        "seconds": time.perf_counter() - started,
    }
