"""Passage embeddings from the served model itself (DyPRAG's encoder is the frozen LLM).

We mean-pool the final (normed) hidden states over the passage's tokens, encoded as raw text
without a chat template.  DyPRAG takes the *last* token's state instead; a reviewer called that
a capacity bottleneck, and the mean over tokens is also what makes long passages well defined:

* a passage longer than ``max_tokens`` (default: the model's window, capped at 2048) is split
  into consecutive windows, each window is encoded on its own, and the embedding is the
  token-weighted mean over windows, i.e. the mean over *all* tokens of the passage.  Nothing is
  truncated silently; a DEBUG log line says how many windows were used.
* an empty or whitespace-only passage has no tokens to pool and raises ``ValueError``.

Embeddings depend only on the passage text, so they are cached (LRU by text), which is what
makes DyPRAG cheaper than context at serving time: a corpus can be encoded once at indexing.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: Longest window encoded in one forward unless the caller asks for another.
DEFAULT_MAX_WINDOW = 2048


class PassageEncoder:
    """Mean-pooled last hidden states of ``model`` for passages, with windowing and a cache.

    Args:
        model: the served causal LM (its decoder is run without the LM head).
        tokenizer: its tokenizer.
        max_tokens: window length for long passages; default ``min(model window, 2048)``.
        batch_size: windows per forward.
        cache_size: passages kept in the LRU cache (0 disables it).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_tokens: int | None = None,
        batch_size: int = 8,
        cache_size: int = 4096,
    ) -> None:
        window = int(getattr(model.config, "max_position_embeddings", 0) or DEFAULT_MAX_WINDOW)
        if max_tokens is None:
            max_tokens = min(window, DEFAULT_MAX_WINDOW)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if max_tokens > window:
            raise ValueError(f"max_tokens={max_tokens} exceeds the model's window of {window} tokens")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def windows(self, passage: str) -> list[list[int]]:
        """Token ids of ``passage`` split into windows of at most ``max_tokens``.

        Raises:
            ValueError: the passage is empty, whitespace-only, or not a string.
        """
        if not isinstance(passage, str):
            raise ValueError(f"a passage must be a string, got {type(passage).__name__}")
        if not passage.strip():
            raise ValueError("cannot encode an empty passage: it has no tokens to pool")
        ids = self.tokenizer(passage, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"passage {passage[:40]!r} tokenizes to nothing")
        return [ids[i : i + self.max_tokens] for i in range(0, len(ids), self.max_tokens)]

    @staticmethod
    def _key(passage: str) -> str:
        return hashlib.sha1(passage.encode("utf-8")).hexdigest()

    @torch.no_grad()
    def encode(self, passages: Sequence[str]) -> torch.Tensor:
        """``[len(passages), hidden]`` fp32 embeddings on the model's device.

        Raises:
            ValueError: an empty passage (its index is named).
            RuntimeError: deltas are applied to the model on this thread right now (the
                embedding must come from the unmodified model, as the translator was trained on;
                hooks applied by another thread do not act on this thread's forwards).
        """
        from hyco_rag.dyprag.injection import deltas_active

        if isinstance(passages, str):
            raise ValueError("encode takes a list of passages, not one string")
        passages = list(passages)
        device = next(self.model.parameters()).device
        out = torch.empty(len(passages), self.dim, dtype=torch.float32, device=device)
        todo: dict[str, list[int]] = {}
        for i, passage in enumerate(passages):
            if not isinstance(passage, str) or not passage.strip():
                raise ValueError(f"passage {i} is empty: there is nothing to encode (drop it or pass text)")
            key = self._key(passage)
            with self._cache_lock:
                cached = self._cache.get(key)
                if cached is not None:
                    self._cache.move_to_end(key)
            if cached is not None:
                out[i] = cached.to(device)
            else:
                todo.setdefault(passage, []).append(i)
        if todo:
            if deltas_active(self.model, on_this_thread=True):
                raise RuntimeError("passages must be encoded by the unmodified model; deltas are applied right now")
            embeddings = self._encode_uncached(list(todo))
            for (passage, rows), embedding in zip(todo.items(), embeddings):
                out[rows] = embedding
                if self.cache_size:
                    with self._cache_lock:
                        self._cache[self._key(passage)] = embedding.detach().cpu()
                        while len(self._cache) > self.cache_size:
                            self._cache.popitem(last=False)
        return out

    def _encode_uncached(self, passages: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        pieces: list[tuple[int, list[int]]] = []
        for p, passage in enumerate(passages):
            windows = self.windows(passage)
            if len(windows) > 1:
                logger.debug(
                    "passage %d has %d tokens: encoded as %d windows of <= %d",
                    p,
                    sum(map(len, windows)),
                    len(windows),
                    self.max_tokens,
                )
            pieces.extend((p, window) for window in windows)
        sums = torch.zeros(len(passages), self.dim, dtype=torch.float32, device=device)
        counts = torch.zeros(len(passages), dtype=torch.float32, device=device)
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # Longest first, so windows of similar length share a batch (less padding).
        order = sorted(range(len(pieces)), key=lambda j: -len(pieces[j][1]))
        for start in range(0, len(order), self.batch_size):
            chunk = [pieces[j] for j in order[start : start + self.batch_size]]
            width = max(len(ids) for _, ids in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, (_, ids) in enumerate(chunk):  # right padding: real tokens never see pads
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            hidden = decoder(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            hidden = hidden.float() * mask.to(device).unsqueeze(-1)
            for row, (p, ids) in enumerate(chunk):
                sums[p] += hidden[row].sum(0)
                counts[p] += len(ids)
        return sums / counts.unsqueeze(-1)
