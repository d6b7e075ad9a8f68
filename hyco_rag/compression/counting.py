"""Token counting in the tokenizer the budget is expressed in (the target LLM's, or the encoder's)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from hyco_rag.compression.words import Segmentation

logger = logging.getLogger(__name__)


class TokenCounter:
    """Counts tokens of texts and attributes a text's tokens to its units.

    Per-unit counts come from one tokenization of the whole text with offsets (a token counts
    for the unit it starts in), so they sum to the text's true count. After dropping units,
    the joined text is counted again: BPE may merge differently across a gap.
    """

    def __init__(self, tokenizer: Any, name: str) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self._fast = bool(getattr(tokenizer, "is_fast", False))

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def count_many(self, texts: Sequence[str]) -> list[int]:
        texts = list(texts)
        nonempty = [i for i, t in enumerate(texts) if t]
        counts = [0] * len(texts)
        if nonempty:
            for i, ids in zip(nonempty, self._ids([texts[i] for i in nonempty])):
                counts[i] = len(ids)
        return counts

    def count(self, text: str) -> int:
        return self.count_many([text])[0]

    def unit_counts(self, seg: Segmentation) -> np.ndarray:
        n = len(seg)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if self._fast:
            encoded = self.tokenizer(seg.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
            if offsets.size == 0:
                return np.zeros(n, dtype=np.int64)
            unit = np.minimum(np.searchsorted(seg.ends, offsets[:, 0], side="right"), n - 1)
            return np.bincount(unit, minlength=n).astype(np.int64)
        # Slow tokenizers have no offsets: count each unit with its leading separator.
        pieces = [seg.text[(seg.ends[i - 1] if i else 0) : seg.ends[i]] for i in range(n)]
        return np.asarray(self.count_many(pieces), dtype=np.int64)


_COUNTERS: dict[str, TokenCounter] = {}
_LOCK = threading.Lock()


def counter_for(target_tokenizer: Any, encoder_tokenizer: Any, encoder_name: str) -> TokenCounter:
    """The counter for ``target_tokenizer`` (a name, a tokenizer object, or None: the encoder's)."""
    if target_tokenizer is None:
        return TokenCounter(encoder_tokenizer, encoder_name)
    if isinstance(target_tokenizer, str):
        if not target_tokenizer.strip():
            raise ValueError("target_tokenizer must be a tokenizer name, a tokenizer object, or None")
        with _LOCK:
            counter = _COUNTERS.get(target_tokenizer)
            if counter is None:
                from hyco_rag.models import load_tokenizer

                counter = TokenCounter(load_tokenizer(target_tokenizer), target_tokenizer)
                _COUNTERS[target_tokenizer] = counter
        return counter
    if not callable(target_tokenizer):
        raise ValueError(
            f"target_tokenizer must be a tokenizer name, a PreTrainedTokenizerBase, or None, got {type(target_tokenizer).__name__}"
        )
    name = getattr(target_tokenizer, "name_or_path", None) or type(target_tokenizer).__name__
    return TokenCounter(target_tokenizer, str(name))
