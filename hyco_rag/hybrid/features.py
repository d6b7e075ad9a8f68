"""Token states of passages from the served model itself: what the hybrid adapter reads.

A passage is encoded alone, as raw text without a chat template, and its final (normed) hidden
states are kept per token.  They depend on the passage text only, so they are cached (LRU by
text): a passage seen again costs no forward, and training caches them on disk once.

The model is causal, so the states of a passage's first m tokens are exactly the states of its
first m tokens encoded alone; training's completion stage slices them instead of re-encoding.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

#: Longest passage window encoded in one forward; longer passages are cut into windows.
MAX_WINDOW = 1024


class TokenStates:
    """``[tokens, hidden]`` states per passage (fp16 on the CPU in the cache, like a KV cache).

    Args:
        model: the served causal LM (its decoder runs without the LM head).
        tokenizer: its tokenizer.
        cache_size: passages kept in the LRU cache (0: none).
        batch_size: windows per forward.
    """

    def __init__(self, model: Any, tokenizer: Any, *, cache_size: int = 2048, batch_size: int = 8) -> None:
        if cache_size < 0 or batch_size < 1:
            raise ValueError(f"cache_size must be >= 0 and batch_size >= 1, got {cache_size} and {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self.batch_size = batch_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def token_ids(self, text: str) -> list[int]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("cannot encode an empty passage: it has no token states")
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"passage {text[:40]!r} tokenizes to nothing")
        return ids

    def encode(self, passages: Sequence[str]) -> list[torch.Tensor]:
        """Each passage's ``[tokens, hidden]`` fp16 CPU states, in order (cached by text).

        Raises:
            ValueError: an empty passage (its index is named), or one string instead of a list.
            RuntimeError: deltas are applied on this thread (states must come from the
                unmodified model, as the adapter was trained on).
        """
        from hyco_rag.dyprag.injection import deltas_active

        if isinstance(passages, str):
            raise ValueError("encode takes a list of passages, not one string")
        passages = list(passages)
        for i, text in enumerate(passages):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"passage {i} is empty: it has no token states (drop it or pass text)")
        found: dict[str, torch.Tensor] = {}
        with self._lock:
            for text in passages:
                cached = self._cache.get(text)
                if cached is not None:
                    self._cache.move_to_end(text)
                    found[text] = cached
        missing = [text for text in dict.fromkeys(passages) if text not in found]
        if missing:
            if deltas_active(self.model, on_this_thread=True):
                raise RuntimeError("passages must be encoded by the unmodified model; deltas are applied right now")
            for text, states in zip(missing, self._encode_uncached(missing)):
                found[text] = states
                if self.cache_size:
                    with self._lock:
                        self._cache[text] = states
                        while len(self._cache) > self.cache_size:
                            self._cache.popitem(last=False)
        return [found[text] for text in passages]

    @torch.inference_mode()
    def _encode_uncached(self, passages: list[str]) -> list[torch.Tensor]:
        device = next(self.model.parameters()).device
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model
        pieces: list[tuple[int, list[int]]] = []
        for p, text in enumerate(passages):
            ids = self.token_ids(text)
            pieces.extend((p, ids[i : i + MAX_WINDOW]) for i in range(0, len(ids), MAX_WINDOW))
        parts: list[list[tuple[int, torch.Tensor]]] = [[] for _ in passages]
        order = sorted(range(len(pieces)), key=lambda j: -len(pieces[j][1]))  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(pieces[j][1]) for j in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, j in enumerate(chunk):  # right padding: real tokens never see pads
                window = pieces[j][1]
                ids[row, : len(window)] = torch.tensor(window)
                mask[row, : len(window)] = 1
            hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            for row, j in enumerate(chunk):
                p, window = pieces[j]
                parts[p].append((j, hidden[row, : len(window)].to("cpu", torch.float16)))
        return [torch.cat([states for _, states in sorted(part, key=lambda item: item[0])]) for part in parts]


def pad_states(states: Sequence[torch.Tensor], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[B, L, hidden]`` fp32 states and their ``[B, L]`` mask."""
    if not states:
        raise ValueError("no states to pad")
    width = max(int(s.shape[0]) for s in states)
    hidden = int(states[0].shape[-1])
    out = torch.zeros(len(states), width, hidden, dtype=torch.float32, device=device)
    mask = torch.zeros(len(states), width, dtype=torch.bool, device=device)
    for i, s in enumerate(states):
        out[i, : s.shape[0]] = s.to(device, torch.float32)
        mask[i, : s.shape[0]] = True
    return out, mask


def context_states(passage_states: Sequence[torch.Tensor], max_tokens: int) -> torch.Tensor:
    """One context's states: its passages' states in order, at most ``max_tokens`` in all
    (each passage keeps an equal share of a budget it would exceed, from its start)."""
    if not passage_states:
        raise ValueError("a context needs at least one passage")
    total = sum(int(s.shape[0]) for s in passage_states)
    if total <= max_tokens:
        return torch.cat(list(passage_states))
    share = max(1, max_tokens // len(passage_states))
    return torch.cat([s[:share] for s in passage_states])[:max_tokens]
