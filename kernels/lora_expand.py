"""LoRA expand: ``y[t, cols_s] += scale[slot_t] * B_s[slot_t] @ buf[s, t]`` in place (Triton).

Two kernels, one op, mirroring ``lora_shrink``:

* ``_lora_expand_decode_kernel``: one program per (row, N block, slice); the rank-long
  intermediate is broadcast against a ``[BLOCK_N, rank]`` tile of ``B`` and reduced, which
  suits rows that each carry their own adapter.
* ``_lora_expand_kernel``: programs over (row block of one slot x N block, slice, active slot);
  one ``tl.dot`` per tile for rows sharing an adapter (prefill).

Both round the fp32 intermediate to the adapter dtype (the tensor-core input type), accumulate
in fp32, scale in fp32 and round ``y`` once.  ``y`` is read and written only at the rows that
have a delta, so a step where few rows carry one costs little.  Slices write consecutive column
ranges of ``y`` (gate | up).  Registered as ``torch.ops.hyco_rag.lora_expand`` (mutating ``y``)
with a fake implementation for ``torch.compile``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kernel_utils import (
    MAX_SLICES_PER_LAUNCH,
    dot_args,
    launch_config,
    next_power_of_2,
    select_slice,
    tile_dot,
)


@triton.jit
def _lora_expand_decode_kernel(
    buf_ptr,
    b_ptr0,
    b_ptr1,
    b_ptr2,
    y_ptr,
    slot_ids_ptr,
    scale_ptr,
    n0,
    n1,
    n2,
    col0,
    col1,
    col2,
    R,
    scale_value,
    stride_bs,
    stride_bm,
    stride_ym,
    stride_yn,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    PER_SLOT_SCALE: tl.constexpr,
):
    token = tl.program_id(0)
    pid_n = tl.program_id(1)
    slice_id = tl.program_id(2)
    slot = tl.load(slot_ids_ptr + token)
    if slot < 0:
        return
    n = select_slice(slice_id, n0, n1, n2)
    n_start = pid_n * BLOCK_N
    if n_start >= n:
        return
    b_ptr = select_slice(slice_id, b_ptr0, b_ptr1, b_ptr2)
    col = select_slice(slice_id, col0, col1, col2)
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    offs_n = n_start + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    h = tl.load(
        buf_ptr + slice_id * stride_bs + token.to(tl.int64) * stride_bm + offs_r,
        mask=mask_r,
        other=0.0,
    )
    # Adapters are contiguous [S, N, R]: element (s, n, r) sits at (s * N + n) * R + r.
    b_tile = tl.load(
        b_ptr + slot.to(tl.int64) * n * R + offs_n[:, None] * R + offs_r[None, :],
        mask=mask_n[:, None] & mask_r[None, :],
        other=0.0,
    )
    h = h.to(b_tile.dtype).to(tl.float32)
    delta = tl.sum(b_tile.to(tl.float32) * h[None, :], axis=1)
    if PER_SLOT_SCALE:
        delta = delta * tl.load(scale_ptr + slot).to(tl.float32)
    else:
        delta = delta * scale_value
    y_ptrs = y_ptr + token.to(tl.int64) * stride_ym + (col + offs_n) * stride_yn
    y_tile = tl.load(y_ptrs, mask=mask_n, other=0.0)
    tl.store(y_ptrs, (y_tile.to(tl.float32) + delta).to(y_tile.dtype), mask=mask_n)


@triton.jit
def _lora_expand_kernel(
    buf_ptr,
    b_ptr0,
    b_ptr1,
    b_ptr2,
    y_ptr,
    sorted_token_ids_ptr,
    active_slots_ptr,
    slot_counts_ptr,
    slot_starts_ptr,
    scale_ptr,
    n0,
    n1,
    n2,
    col0,
    col1,
    col2,
    R,
    scale_value,
    num_n_blocks,
    stride_bs,
    stride_bm,
    stride_ym,
    stride_yn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    PER_SLOT_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    slice_id = tl.program_id(1)
    slot_idx = tl.program_id(2)
    pid_m = pid // num_n_blocks
    pid_n = pid % num_n_blocks
    count = tl.load(slot_counts_ptr + slot_idx)
    m_start = pid_m * BLOCK_M
    n = select_slice(slice_id, n0, n1, n2)
    n_start = pid_n * BLOCK_N
    if (m_start >= count) | (n_start >= n):
        return
    slot = tl.load(active_slots_ptr + slot_idx)
    start = tl.load(slot_starts_ptr + slot_idx)
    b_ptr = select_slice(slice_id, b_ptr0, b_ptr1, b_ptr2)
    col = select_slice(slice_id, col0, col1, col2)
    offs_m = m_start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < count
    rows = tl.load(sorted_token_ids_ptr + start + offs_m, mask=mask_m, other=0).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    offs_n = n_start + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    h = tl.load(
        buf_ptr + slice_id * stride_bs + rows[:, None] * stride_bm + offs_r[None, :],
        mask=mask_m[:, None] & mask_r[None, :],
        other=0.0,
    )
    b_tile = tl.load(  # [BLOCK_R, BLOCK_N]: B[slot] read transposed
        b_ptr + slot.to(tl.int64) * n * R + offs_n[None, :] * R + offs_r[:, None],
        mask=mask_r[:, None] & mask_n[None, :],
        other=0.0,
    )
    acc = tile_dot(h.to(b_tile.dtype), b_tile, PRECISION, UPCAST)
    if PER_SLOT_SCALE:
        acc = acc * tl.load(scale_ptr + slot).to(tl.float32)
    else:
        acc = acc * scale_value
    y_ptrs = y_ptr + rows[:, None] * stride_ym + (col + offs_n[None, :]) * stride_yn
    mask = mask_m[:, None] & mask_n[None, :]
    y_tile = tl.load(y_ptrs, mask=mask, other=0.0)
    tl.store(y_ptrs, (y_tile.to(tl.float32) + acc).to(y_tile.dtype), mask=mask)


def _slice_args(lora_b: list[torch.Tensor], first_col: int) -> tuple[list[torch.Tensor], list[int], list[int]]:
    """Pointers, widths and first columns of up to MAX_SLICES_PER_LAUNCH slices, padded by
    repeating the last one (padded entries are never selected: the grid stops at len(group))."""
    ns = [b.shape[1] for b in lora_b]
    cols = [first_col + sum(ns[:i]) for i in range(len(ns))]
    pad = MAX_SLICES_PER_LAUNCH - len(lora_b)
    return lora_b + [lora_b[-1]] * pad, ns + [ns[-1]] * pad, cols + [cols[-1]] * pad


@torch.library.custom_op("hyco_rag::lora_expand", mutates_args=("y",))
def lora_expand(
    y: torch.Tensor,
    buf: torch.Tensor,
    lora_b: list[torch.Tensor],
    slot_ids: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    active_slot_ids: torch.Tensor,
    slot_token_counts: torch.Tensor,
    slot_token_starts: torch.Tensor,
    max_tokens_per_slot: int,
    decode: bool,
    scale: torch.Tensor | None,
    scale_value: float,
) -> None:
    """Launch the expand kernels, adding every slice's delta into ``y`` in place.

    Args:
        y: ``[T, sum(N_s)]`` base output, updated in place.
        buf: fp32 ``[len(lora_b), T, rank]`` from ``lora_shrink``.
        lora_b: per slice a contiguous ``[S, N_s, rank]`` stack.
        slot_ids .. slot_token_starts: :meth:`LoRASlotMetadata.meta_args`.
        max_tokens_per_slot: sizes the prefill grid.
        decode: run the per-row kernel instead of the slot-grouped one.
        scale: per-slot fp32 ``[S]`` scales, or None to use ``scale_value`` for every slot.
    """
    with torch.inference_mode():
        num_tokens = y.shape[0]
        num_active = active_slot_ids.numel()
        if num_tokens == 0 or num_active == 0:
            return
        rank = lora_b[0].shape[2]
        block_r = next_power_of_2(rank)
        per_slot = scale is not None
        scale_ptr = scale if scale is not None else buf  # never read when per_slot is False
        first_col = 0
        for first in range(0, len(lora_b), MAX_SLICES_PER_LAUNCH):
            group = lora_b[first : first + MAX_SLICES_PER_LAUNCH]
            (b0, b1, b2), (n0, n1, n2), (c0, c1, c2) = _slice_args(group, first_col)
            first_col += sum(b.shape[1] for b in group)
            buf_group = buf[first : first + len(group)]
            max_n = max(n0, n1, n2)
            if decode:
                cfg = launch_config("expand_decode", y.device)
                grid = (num_tokens, triton.cdiv(max_n, cfg["BLOCK_N"]), len(group))
                _lora_expand_decode_kernel[grid](
                    buf_group, b0, b1, b2, y, slot_ids, scale_ptr,
                    n0, n1, n2, c0, c1, c2, rank, scale_value,
                    buf_group.stride(0), buf_group.stride(1), y.stride(0), y.stride(1),
                    BLOCK_N=cfg["BLOCK_N"], BLOCK_R=max(2, block_r), PER_SLOT_SCALE=per_slot,
                    num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                )  # fmt: skip
            else:
                cfg = launch_config("expand_prefill", y.device)
                n_blocks = triton.cdiv(max_n, cfg["BLOCK_N"])
                grid = (triton.cdiv(max_tokens_per_slot, cfg["BLOCK_M"]) * n_blocks, len(group), num_active)
                _lora_expand_kernel[grid](
                    buf_group, b0, b1, b2, y,
                    sorted_token_ids, active_slot_ids, slot_token_counts, slot_token_starts, scale_ptr,
                    n0, n1, n2, c0, c1, c2, rank, scale_value, n_blocks,
                    buf_group.stride(0), buf_group.stride(1), y.stride(0), y.stride(1),
                    BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_R=max(16, block_r),
                    PER_SLOT_SCALE=per_slot, **dot_args(y.dtype),
                    num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                )  # fmt: skip


@lora_expand.register_fake
def _lora_expand_fake(
    y: torch.Tensor,
    buf: torch.Tensor,
    lora_b: list[torch.Tensor],
    slot_ids: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    active_slot_ids: torch.Tensor,
    slot_token_counts: torch.Tensor,
    slot_token_starts: torch.Tensor,
    max_tokens_per_slot: int,
    decode: bool,
    scale: torch.Tensor | None,
    scale_value: float,
) -> None:
    """Shape-only twin of :func:`lora_expand`: it only mutates ``y``."""
    return None
