"""Pure-torch LoRA shrink/expand: the reference for the Triton kernels and the CPU path.

Same maths and rounding as the kernels, so the two can be compared tightly:

* shrink: ``buf[s, t] = A_s[slot_t] @ x[t]``, accumulated in fp32, stored fp32
  ``[slices, T, rank]`` (zero for rows without a delta);
* expand: the fp32 intermediate is rounded to the adapter dtype (as the kernels feed it to the
  tensor cores), multiplied by ``B_s[slot_t]`` with fp32 accumulation, scaled in fp32, added to
  ``y`` in fp32 and rounded once to ``y``'s dtype.

Two vectorised strategies, chosen per call from the slot metadata and never looping over rows:

* **grouped** (prefill-like, many rows per slot): one dense matmul per active slot on that
  slot's rows, so the work is a handful of GEMMs whatever T is;
* **row-gather** (decode-like, about one row per slot): the adapters of the rows are gathered
  and multiplied with ``bmm``, in chunks that bound the gathered copy, because a Python loop
  over 64 one-row slots would cost more than the maths.

A third layout serves a batch whose rows each carry their own adapter for many steps (the
serving engine's decode batch on CPU): :func:`gather_row_adapters` gathers every row's adapter
once per batch composition into ``[B, in, r]`` / ``[B, r, out]`` stacks (scale folded in, zeros
for rows without a delta), and :func:`add_lora_rows_torch` is then two ``bmm`` per call.  Same
maths as the slot path; measured on SmolLM2's gate projection at batch 8 and rank 2 on one CPU
thread, 19 us per call against 600 us for the slot path (whose metadata handling and gathers
are per call), i.e. about 50 ms per decode step over the model's 90 target linears.

These functions trust their inputs; ``lora_ops.add_lora`` validates before calling them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .slot_metadata import LoRASlotMetadata

#: Below this many rows per active slot, gathering adapters per row can beat per-slot matmuls...
GATHER_MAX_ROWS_PER_SLOT = 4
#: ...but only while a row's adapters are small (rank x (in + out) elements): the gather copies
#: them, tripling their memory traffic, whereas a per-slot matmul reads them in place and only
#: pays a fixed dispatch cost (measured on CPU: 64 one-row slots of SmolLM2's gate|up at rank
#: 16 run faster as 64 per-slot matmuls than as a gather + bmm).
GATHER_MAX_ROW_ELEMENTS = 8192
#: Elements of gathered adapter copies allowed at once in the row-gather strategy (64 MiB fp32).
GATHER_CHUNK_ELEMENTS = 1 << 24


def _use_row_gather(meta: LoRASlotMetadata, row_elements: int) -> bool:
    """Row-gather for decode-like mappings with small adapters; per-slot grouping otherwise."""
    rows = sum(meta.slot_token_counts_host)
    few_rows = rows < GATHER_MAX_ROWS_PER_SLOT * meta.num_active_slots
    return few_rows and row_elements <= GATHER_MAX_ROW_ELEMENTS


def _row_chunks(meta: LoRASlotMetadata, per_row_elements: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, their slots) of every row with a delta, in chunks bounding the gathered copies."""
    first = meta.slot_token_starts_host[0]
    rows = meta.sorted_token_ids[first:].long()
    slots = meta.slot_ids[rows].long()
    step = max(1, GATHER_CHUNK_ELEMENTS // max(1, per_row_elements))
    for start in range(0, rows.numel(), step):
        yield rows[start : start + step], slots[start : start + step]


def _slot_groups(meta: LoRASlotMetadata) -> Iterator[tuple[int, torch.Tensor]]:
    """(slot, its rows) for every active slot: a loop over slots, never over rows."""
    for slot, start, count in zip(meta.active_slots_host, meta.slot_token_starts_host, meta.slot_token_counts_host):
        yield slot, meta.sorted_token_ids[start : start + count].long()


def _round_like(h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round the fp32 intermediate to the adapter dtype and back, as the kernels do."""
    return h if dtype == torch.float32 else h.to(dtype).float()


def _add_rows(y_cols: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor) -> None:
    """``y_cols[rows] += delta`` in fp32 with a single rounding to ``y``'s dtype."""
    updated = y_cols.index_select(0, rows).float().add_(delta)
    y_cols.index_copy_(0, rows, updated.to(y_cols.dtype))


def lora_shrink_torch(x: torch.Tensor, lora_a: Sequence[torch.Tensor], meta: LoRASlotMetadata) -> torch.Tensor:
    """``buf[s, t] = A_s[slot_t] @ x[t]`` in fp32.

    Returns:
        fp32 ``[len(lora_a), T, rank]``; rows without a delta are zero.
    """
    rank = lora_a[0].shape[1]
    buf = torch.zeros(len(lora_a), x.shape[0], rank, dtype=torch.float32, device=x.device)
    if meta.no_delta:
        return buf
    if _use_row_gather(meta, rank * x.shape[1]):
        for rows, slots in _row_chunks(meta, rank * x.shape[1]):
            xs = x.index_select(0, rows).float().unsqueeze(-1)  # [c, K, 1]
            for s, a in enumerate(lora_a):
                buf[s, rows] = torch.bmm(a[slots].float(), xs).squeeze(-1)
    else:
        for slot, rows in _slot_groups(meta):
            xs = x.index_select(0, rows).float()
            for s, a in enumerate(lora_a):
                buf[s, rows] = xs @ a[slot].float().t()
    return buf


def lora_expand_torch(
    y: torch.Tensor,
    buf: torch.Tensor,
    lora_b: Sequence[torch.Tensor],
    meta: LoRASlotMetadata,
    scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """``y[t, cols_s] += scale[slot_t] * B_s[slot_t] @ buf[s, t]`` in place; returns ``y``.

    Slice ``s`` writes the columns after those of slices ``0..s-1``.
    """
    if meta.no_delta:
        return y
    offsets = [0]
    for b in lora_b:
        offsets.append(offsets[-1] + b.shape[1])
    max_n = max(b.shape[1] for b in lora_b)
    if _use_row_gather(meta, max_n * buf.shape[-1]):
        for rows, slots in _row_chunks(meta, max_n * buf.shape[-1]):
            row_scale = scale[slots].float().unsqueeze(-1) if isinstance(scale, torch.Tensor) else scale
            for s, b in enumerate(lora_b):
                h = _round_like(buf[s, rows], b.dtype).unsqueeze(-1)  # [c, r, 1]
                delta = torch.bmm(b[slots].float(), h).squeeze(-1) * row_scale
                _add_rows(y[:, offsets[s] : offsets[s + 1]], rows, delta)
    else:
        for slot, rows in _slot_groups(meta):
            slot_scale = scale[slot].float() if isinstance(scale, torch.Tensor) else scale
            for s, b in enumerate(lora_b):
                h = _round_like(buf[s, rows], b.dtype)
                delta = (h @ b[slot].float().t()) * slot_scale
                _add_rows(y[:, offsets[s] : offsets[s + 1]], rows, delta)
    return y


def add_lora_torch(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: Sequence[torch.Tensor],
    lora_b: Sequence[torch.Tensor],
    meta: LoRASlotMetadata,
    scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Shrink then expand with the torch reference; ``y`` is updated in place and returned."""
    if meta.no_delta:
        return y
    return lora_expand_torch(y, lora_shrink_torch(x, lora_a, meta), lora_b, meta, scale)


def gather_row_adapters(
    lora_a: torch.Tensor, lora_b: torch.Tensor, row_slots: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each batch row's adapter, laid out for a batched matmul (build once per batch composition).

    Args:
        lora_a: ``[S, r, in]``; lora_b: ``[S, out, r]``; scale: ``[S]``.
        row_slots: ``[B]`` slot of each batch row, -1 = no delta.

    Returns:
        fp32 ``(a_rows [B, in, r], b_rows [B, r, out])``: ``b_rows`` carries the row's scale,
        and both are zero for rows without a delta.
    """
    has = (row_slots >= 0).to(torch.float32)
    index = row_slots.clamp(min=0).long()
    a_rows = lora_a.index_select(0, index).float().transpose(1, 2).contiguous()
    row_scale = scale.float().index_select(0, index) * has
    b_rows = (lora_b.index_select(0, index).float() * row_scale[:, None, None]).transpose(1, 2).contiguous()
    return a_rows, b_rows


def add_lora_rows_torch(
    y: torch.Tensor, x: torch.Tensor, a_rows: torch.Tensor, b_rows: torch.Tensor, adapter_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``y[b, t] += (x[b, t] @ a_rows[b]) @ b_rows[b]`` in place; returns ``y``.

    ``y`` is ``[B, T, out]``, ``x`` ``[B, T, in]``, the adapters from :func:`gather_row_adapters`.
    The rank-r intermediate is rounded to ``adapter_dtype`` as in the slot path; accumulation
    is fp32 and ``y`` is rounded once.
    """
    h = _round_like(torch.bmm(x.float() if x.dtype != torch.float32 else x, a_rows), adapter_dtype)
    if y.dtype == torch.float32:
        return y.baddbmm_(h, b_rows)
    y.copy_(torch.baddbmm(y.float(), h, b_rows).to(y.dtype))
    return y
