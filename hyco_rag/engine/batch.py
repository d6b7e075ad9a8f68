"""Continuous batching at step granularity: one KV cache for every row in flight.

The engine's worker owns one :class:`DecodeBatch`.  Between two decode steps it may

* **merge** rows prefilled meanwhile (:meth:`DecodeBatch.prefill`, left-padded, each under its
  own delta slot, possibly on another thread): their caches join the running cache,
  left-padded to a common length;
* **evict** finished, cancelled or timed-out rows: their cache rows are dropped at once, and
  columns that became padding in every remaining row are trimmed.

Every forward is one call of the HF model with an explicit 2-D attention mask and per-row
position ids (a prefill whose rows carry soft tokens passes ``inputs_embeds``: the token
embeddings with each such row's soft tokens written over its placeholder positions; rows
without soft tokens in the same forward are unchanged), which is how ``generate`` itself runs a left-padded batch; the masked (padding)
positions get exactly zero attention weight, so a row's tokens do not depend on its
neighbours except through floating-point summation order of batched matmuls.

Deltas: each forward hooks the rows' deltas in through
:meth:`~hyco_rag.dyprag.injection.DeltaInjector.apply_prepared` (one slot per row, ``-1`` for
rows without one, the kernels' per-row path) and removes the hooks when the forward returns or
raises.  The prepared :class:`~hyco_rag.dyprag.delta.DeltaBatch` is rebuilt only when the
batch composition changes.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from hyco_rag.engine.sampling import SamplingParams
from hyco_rag.engine.stops import StopSequenceFilter

if TYPE_CHECKING:
    from hyco_rag.dyprag.delta import DeltaBatch, LoRADelta
    from hyco_rag.dyprag.injection import DeltaInjector

logger = logging.getLogger(__name__)

#: What a finished row reports.
FINISH_STOP, FINISH_LENGTH = "stop", "length"


@dataclass
class Row:
    """One sequence in flight: its prompt, its delta, what it generated and where it goes.

    ``on_text`` receives each newly safe piece of cleaned text (stop sequences applied);
    ``on_finish`` is called once with the finish reason when the row leaves the batch normally.
    ``should_abort`` is polled between steps and returns an exception that ends the row early
    (cancellation, timeout), or ``None``.
    """

    prompt_ids: list[int]
    sampling: SamplingParams
    delta: LoRADelta | None = None
    soft_embeds: torch.Tensor | None = None  # [k, hidden] written over prompt_ids[soft_start:]
    soft_start: int = 0
    on_text: Callable[[str], None] = lambda piece: None
    on_finish: Callable[[Row], None] = lambda row: None
    on_error: Callable[[BaseException], None] = lambda error: None
    should_abort: Callable[[], BaseException | None] = lambda: None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    first_token_at: float | None = None
    _decoded: str = ""
    _filter: StopSequenceFilter | None = None
    _generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("a row needs at least one prompt token")
        if self.soft_embeds is not None and not (
            self.soft_embeds.dim() == 2
            and 0 <= self.soft_start
            and self.soft_start + self.soft_embeds.shape[0] <= len(self.prompt_ids)
        ):
            raise ValueError(
                f"soft tokens of shape {tuple(self.soft_embeds.shape)} at {self.soft_start} do not fit a prompt of "
                f"{len(self.prompt_ids)} tokens"
            )
        self._filter = StopSequenceFilter(list(self.sampling.stop))

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Prefilled:
    """Rows prefilled by :meth:`DecodeBatch.prefill`, waiting for :meth:`DecodeBatch.merge`:
    their KV cache, mask, prompt lengths and first sampled tokens."""

    rows: list[Row]
    cache: Any
    mask: torch.Tensor
    lengths: torch.Tensor
    tokens: torch.Tensor


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a row: the generation config's and the tokenizer's end of sequence."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


def _growing_layer_type() -> type:
    """A ``DynamicLayer`` whose keys and values live in a buffer with spare columns.

    HF's dynamic layer concatenates the whole cache with the new column at every step, which
    copies ``batch x heads x length x dim`` per layer per step (hundreds of MB per step for a
    batch of 8 over 1,000 tokens); this one writes the new column in place and doubles the
    buffer when it is full.  ``keys``/``values`` are views of the filled part, so everything
    that reads a layer sees an ordinary dynamic cache.
    """
    global _GROWING_LAYER
    if _GROWING_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class GrowingLayer(DynamicLayer):  # type: ignore[misc, valid-type]
            keys: torch.Tensor
            values: torch.Tensor
            is_initialized: bool
            _keys: torch.Tensor
            _values: torch.Tensor
            _length: int = 0

            def update(
                self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
            ) -> tuple[torch.Tensor, torch.Tensor]:
                if not self.is_initialized or self._length == 0:
                    self.lazy_initialization(key_states, value_states)
                    self.set_states(key_states, value_states)
                    return self.keys, self.values
                length, new = self._length, key_states.shape[-2]
                if length + new > self._keys.shape[-2]:
                    self.set_states(self.keys, self.values, spare=max(length, new))
                self._keys[:, :, length : length + new] = key_states
                self._values[:, :, length : length + new] = value_states
                self._length = length + new
                self.keys = self._keys[:, :, : self._length]
                self.values = self._values[:, :, : self._length]
                return self.keys, self.values

            def set_states(self, keys: torch.Tensor, values: torch.Tensor, spare: int = 64) -> None:
                """Hold ``keys``/``values`` (copied) with ``spare`` free columns after them."""
                shape = list(keys.shape)
                length = shape[-2]
                shape[-2] = length + max(spare, 1)
                self._keys = keys.new_empty(shape)
                self._values = values.new_empty([*shape[:-1], values.shape[-1]])
                self._keys[:, :, :length] = keys
                self._values[:, :, :length] = values
                self._length = length
                self.keys = self._keys[:, :, :length]
                self.values = self._values[:, :, :length]
                self.is_initialized = True

        _GROWING_LAYER = GrowingLayer
    return _GROWING_LAYER


_GROWING_LAYER: type | None = None


def _new_cache(config: Any) -> Any:
    """A dynamic cache whose full-attention layers grow in place (see :func:`_growing_layer_type`)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    growing = _growing_layer_type()
    cache.layers = [growing() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _set_layer(layer: Any, keys: torch.Tensor, values: torch.Tensor) -> None:
    if hasattr(layer, "set_states"):
        layer.set_states(keys, values)
    else:
        layer.keys, layer.values = keys, values


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class DecodeBatch:
    """The running batch of one model: rows, their shared KV cache, mask and positions.

    Args:
        model: the served causal LM (Llama-style decoder with a dynamic KV cache).
        tokenizer: its tokenizer, used only to detokenize (the caller serialises it).
        injector: hooks per-row deltas in; ``None`` when the model serves no deltas.
        eos_ids: token ids that end a row (not part of its text).
        decode_lock: a context manager factory held around every detokenization.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        injector: DeltaInjector | None,
        eos_ids: Sequence[int],
        decode_lock: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.injector = injector
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.decode_lock = decode_lock
        self.device = next(model.parameters()).device
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [B, L] 1 = real token
        self.positions: torch.Tensor | None = None  # [B] position id of the next token
        self.last_tokens: torch.Tensor | None = None  # [B] the token each row feeds next
        self._delta_key: tuple[int, ...] | None = None
        self._delta_batch: DeltaBatch | None = None
        self.steps = 0
        parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self._takes_cache_position = "cache_position" in parameters

    def __len__(self) -> int:
        return len(self.rows)

    # ------------------------------------------------------------------ deltas

    def _hooks(self, rows: Sequence[Row]) -> contextlib.AbstractContextManager[Any]:
        """Hook the running ``rows``' deltas in for one decode step (nothing when no row
        carries one); the prepared batch is kept until the composition changes."""
        if self.injector is None or all(row.delta is None for row in rows):
            return contextlib.nullcontext()
        key = tuple(id(row) for row in rows)
        if key != self._delta_key or self._delta_batch is None:
            self._delta_batch = self.injector.prepare([row.delta for row in rows])
            self._delta_key = key
        return self.injector.apply_prepared(self._delta_batch)

    # ------------------------------------------------------------------ forwards

    def _forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        past: int,
        hooks: contextlib.AbstractContextManager[Any],
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {self._cache_argument: cache}
        if self._takes_cache_position:  # transformers < 5.x derives nothing from the cache
            kwargs["cache_position"] = torch.arange(past, past + input_ids.shape[1], device=self.device)
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds
        else:
            kwargs["input_ids"] = input_ids
        with hooks:
            output = self.model(attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **kwargs)
        return output.logits[:, -1, :].float()

    def _embeds_with_soft_tokens(self, rows: list[Row], ids: torch.Tensor) -> torch.Tensor | None:
        """The prefill's input embeddings with each row's soft tokens in place, or ``None``
        when no row carries soft tokens (the model embeds the ids itself)."""
        if all(row.soft_embeds is None for row in rows):
            return None
        embedding = self.model.get_input_embeddings()
        embeds = embedding(ids).clone()
        width = ids.shape[1]
        for i, row in enumerate(rows):
            if row.soft_embeds is not None:
                start = width - len(row.prompt_ids) + row.soft_start  # rows are left-padded
                soft = row.soft_embeds.to(embeds.device, embeds.dtype)
                embeds[i, start : start + soft.shape[0]] = soft
        return embeds

    def admit(self, rows: Sequence[Row]) -> None:
        """Prefill ``rows`` and merge them into the running batch (:meth:`prefill` + :meth:`merge`).

        If a group's forward fails, that group's rows are not kept and the error is raised;
        groups merged before it stay.
        """
        for prefilled in self.prefill(rows):
            self.merge(prefilled)

    def prefill(self, rows: Sequence[Row]) -> Iterator[Prefilled]:
        """Prefill ``rows``, one length group at a time, without touching the running batch.

        Rows of similar prompt length are prefilled together (a group wastes at most a
        quarter of its compute on padding; padding a 260-token prompt to a 1,000-token one
        doubled the prefill cost), each group in one forward under its own delta
        application.  Nothing of the running batch is read or written, so another thread may
        prefill while the decode thread steps (the delta hooks act only on the thread that
        applied them); hand each result to :meth:`merge` on the decode thread.
        """
        for group in _length_groups(list(rows)):
            yield self._prefill_group(group)

    @torch.inference_mode()
    def _prefill_group(self, rows: list[Row]) -> Prefilled:
        width = max(len(row.prompt_ids) for row in rows)
        ids = torch.full((len(rows), width), 0, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids, dtype=torch.long)
            mask[i, width - len(row.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = _new_cache(self.model.config)
        hooks: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.injector is not None and any(row.delta is not None for row in rows):
            hooks = self.injector.apply_prepared(self.injector.prepare([row.delta for row in rows]))
        logits = self._forward(ids, mask, positions, cache, 0, hooks, self._embeds_with_soft_tokens(rows, ids))
        return Prefilled(rows, cache, mask, mask.sum(-1), self._sample(rows, logits))

    def merge(self, prefilled: Prefilled) -> None:
        """Add prefilled rows to the running batch and hand out their first tokens (decode
        thread).  Rows may already be finished then; :meth:`evict` removes them."""
        self._merge(prefilled.rows, prefilled.cache, prefilled.mask, prefilled.lengths, prefilled.tokens)
        self._emit(prefilled.rows, prefilled.tokens)

    @torch.inference_mode()
    def step(self) -> None:
        """One decode step for every running row."""
        if not self.rows:
            return
        assert self.mask is not None and self.positions is not None and self.last_tokens is not None
        past = self.mask.shape[1]
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        logits = self._forward(
            self.last_tokens[:, None], self.mask, self.positions[:, None], self.cache, past, self._hooks(self.rows)
        )
        self.positions = self.positions + 1
        new_tokens = self._sample(self.rows, logits)
        self.last_tokens = new_tokens
        self.steps += 1
        self._emit(self.rows, new_tokens)

    def _merge(self, rows: list[Row], cache: Any, mask: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask = rows, cache, mask
            self.positions, self.last_tokens = lengths.clone(), tokens
            self._delta_key = None
            return
        assert self.mask is not None and self.positions is not None and self.last_tokens is not None
        length = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            keys = torch.cat([_pad_left(old.keys, length, 2), _pad_left(new.keys, length, 2)], dim=0)
            values = torch.cat([_pad_left(old.values, length, 2), _pad_left(new.values, length, 2)], dim=0)
            _set_layer(old, keys, values)
        self.mask = torch.cat([_pad_left(self.mask, length, 1), _pad_left(mask, length, 1)], dim=0)
        self.positions = torch.cat([self.positions, lengths])
        self.last_tokens = torch.cat([self.last_tokens, tokens])
        self.rows = self.rows + rows
        self._delta_key = None

    # ------------------------------------------------------------------ tokens

    def _sample(self, rows: Sequence[Row], logits: torch.Tensor) -> torch.Tensor:
        tokens = logits.argmax(dim=-1)
        for i, row in enumerate(rows):
            params = row.sampling
            if params.greedy:
                continue
            if row._generator is None:
                row._generator = torch.Generator(device=self.device)
                row._generator.manual_seed(params.seed if params.seed is not None else torch.seed())
            probs = torch.softmax(logits[i] / params.temperature, dim=-1)
            if params.top_p < 1:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(0) - sorted_probs < params.top_p
                sorted_probs = sorted_probs * keep
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            tokens[i] = torch.multinomial(probs, 1, generator=row._generator)[0]
        return tokens

    def _emit(self, rows: Sequence[Row], tokens: torch.Tensor) -> None:
        """Append each row's new token, hand out its safe text, and mark finished rows."""
        now = time.perf_counter()
        for row, token in zip(rows, tokens.tolist()):
            if row.finished:
                continue
            if row.first_token_at is None:
                row.first_token_at = now
            assert row._filter is not None
            if token in self.eos_ids:
                row.finish_reason = FINISH_STOP
            else:
                row.generated.append(token)
                with self.decode_lock():
                    decoded = self.tokenizer.decode(row.generated, skip_special_tokens=True)
                if not decoded.endswith("\ufffd"):  # an incomplete multi-byte character waits
                    piece, row._decoded = decoded[len(row._decoded) :], decoded
                    self._deliver(row, row._filter.feed(piece))
                if row._filter.stopped:
                    row.finish_reason = FINISH_STOP
                elif len(row.generated) >= row.sampling.max_tokens:
                    row.finish_reason = FINISH_LENGTH
            if row.finished:
                if not row._filter.stopped:
                    with self.decode_lock():
                        decoded = self.tokenizer.decode(row.generated, skip_special_tokens=True)
                    self._deliver(row, row._filter.feed(decoded[len(row._decoded) :]) + row._filter.finish())

    def _deliver(self, row: Row, piece: str) -> None:
        if piece:
            row.text += piece
            try:
                row.on_text(piece)
            except Exception:  # a consumer's bug must not stop the other rows
                logger.exception("a row's text callback failed")

    # ------------------------------------------------------------------ leaving

    def evict(self) -> list[Row]:
        """Remove finished rows and rows that must abort; return every row that left.

        Finished rows get ``on_finish``; aborted ones ``on_error`` with their reason.
        """
        leaving: list[Row] = []
        keep: list[int] = []
        for i, row in enumerate(self.rows):
            reason = None if row.finished else row.should_abort()
            if row.finished or reason is not None:
                leaving.append(row)
                if reason is not None:
                    row.finish_reason = "abort"
                    _call(row.on_error, reason)
                else:
                    _call(row.on_finish, row)
            else:
                keep.append(i)
        if leaving:
            self._keep(keep)
        return leaving

    def fail_all(self, error: BaseException) -> list[Row]:
        """Every running row ends with ``error`` (the batch is reset)."""
        rows, self.rows = self.rows, []
        for row in rows:
            row.finish_reason = "error"
            _call(row.on_error, error)
        self._keep([])
        return rows

    def _keep(self, indices: list[int]) -> None:
        if not indices:
            self.rows, self.cache, self.mask, self.positions, self.last_tokens = [], None, None, None, None
            self._delta_key, self._delta_batch = None, None
            return
        assert self.mask is not None and self.positions is not None and self.last_tokens is not None
        self.rows = [self.rows[i] for i in indices]
        index = torch.tensor(indices, dtype=torch.long, device=self.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0  # columns that are padding in every row go
        for layer in self.cache.layers:
            _set_layer(layer, layer.keys.index_select(0, index)[:, :, start:], layer.values.index_select(0, index)[:, :, start:])
        self.mask = mask[:, start:]
        self.positions = self.positions.index_select(0, index)
        self.last_tokens = self.last_tokens.index_select(0, index)
        self._delta_key = None


def _length_groups(rows: list[Row], max_waste: float = 0.25) -> list[list[Row]]:
    """``rows`` split into prefill groups whose padding is at most ``max_waste`` of their
    tokens (rows sorted by prompt length; a group grows while it stays under the bound)."""
    groups: list[list[Row]] = []
    for row in sorted(rows, key=lambda r: len(r.prompt_ids)):
        group = groups[-1] if groups else None
        if group is not None:
            width = len(row.prompt_ids)  # the longest so far: rows come sorted
            if width * (len(group) + 1) <= (1 + max_waste) * (sum(len(r.prompt_ids) for r in group) + width):
                group.append(row)
                continue
        groups.append([row])
    return groups


def _call(callback: Callable[[Any], None], value: Any) -> None:
    try:
        callback(value)
    except Exception:
        logger.exception("a row's completion callback failed")
