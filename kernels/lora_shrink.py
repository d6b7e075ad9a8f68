"""LoRA shrink: ``buf[s, t, :] = A_s[slot_t] @ x[t]`` for every row with a delta (Triton).

Two kernels, one op:

* ``_lora_shrink_decode_kernel``: one program per (row, K-split, slice).  For the few rows of a
  decode step, each usually with its own slot, a row is a dot product against a ``[rank, K]``
  adapter, so the kernel reduces with element-wise products (no tensor-core tile to fill) and
  splits K across programs until the GPU is busy, accumulating with fp32 atomics.
* ``_lora_shrink_kernel``: programs over (row block of one slot, K-split, slice, active slot),
  reading the rows through the slot-sorted order of :class:`LoRASlotMetadata` so that one
  ``tl.dot`` tile serves up to ``BLOCK_M`` rows sharing an adapter (prefill).

The output is fp32 ``[slices, T, rank]`` (zero for rows without a delta), consumed by
``lora_expand``.  The op is registered as ``torch.ops.hyco_rag.lora_shrink`` with a fake
(shape-only) implementation, so ``torch.compile`` can trace through it.
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
    split_k,
    tile_dot,
)


@triton.jit
def _lora_shrink_decode_kernel(
    x_ptr,
    a_ptr0,
    a_ptr1,
    a_ptr2,
    out_ptr,
    slot_ids_ptr,
    K,
    R,
    stride_xm,
    stride_xk,
    stride_os,
    stride_om,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    pid = tl.program_id(0)
    slice_id = tl.program_id(1)
    token = pid // SPLIT_K
    pid_k = pid % SPLIT_K
    slot = tl.load(slot_ids_ptr + token)
    if slot < 0:
        return
    # Adapters are contiguous [S, R, K]: row r of slot s starts at (s * R + r) * K.
    a_ptr = select_slice(slice_id, a_ptr0, a_ptr1, a_ptr2) + slot.to(tl.int64) * R * K
    x_row = x_ptr + token.to(tl.int64) * stride_xm
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for i in range(0, tl.cdiv(K, BLOCK_K * SPLIT_K)):
        offs_k = (i * SPLIT_K + pid_k) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        xv = tl.load(x_row + offs_k * stride_xk, mask=mask_k, other=0.0).to(tl.float32)
        av = tl.load(
            a_ptr + offs_r[:, None] * K + offs_k[None, :],
            mask=mask_r[:, None] & mask_k[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(av * xv[None, :], axis=1)
    out = out_ptr + slice_id * stride_os + token.to(tl.int64) * stride_om + offs_r
    if SPLIT_K == 1:
        tl.store(out, acc, mask=mask_r)
    else:
        tl.atomic_add(out, acc, mask=mask_r)


@triton.jit
def _lora_shrink_kernel(
    x_ptr,
    a_ptr0,
    a_ptr1,
    a_ptr2,
    out_ptr,
    sorted_token_ids_ptr,
    active_slots_ptr,
    slot_counts_ptr,
    slot_starts_ptr,
    K,
    R,
    stride_xm,
    stride_xk,
    stride_os,
    stride_om,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    SPLIT_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    slice_id = tl.program_id(1)
    slot_idx = tl.program_id(2)
    pid_m = pid // SPLIT_K
    pid_k = pid % SPLIT_K
    count = tl.load(slot_counts_ptr + slot_idx)
    m_start = pid_m * BLOCK_M
    if m_start >= count:
        return
    slot = tl.load(active_slots_ptr + slot_idx)
    start = tl.load(slot_starts_ptr + slot_idx)
    offs_m = m_start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < count
    rows = tl.load(sorted_token_ids_ptr + start + offs_m, mask=mask_m, other=0).to(tl.int64)
    a_ptr = select_slice(slice_id, a_ptr0, a_ptr1, a_ptr2) + slot.to(tl.int64) * R * K
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for i in range(0, tl.cdiv(K, BLOCK_K * SPLIT_K)):
        offs_k = (i * SPLIT_K + pid_k) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x_tile = tl.load(
            x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        a_tile = tl.load(  # [BLOCK_K, BLOCK_R]: A[slot] read transposed
            a_ptr + offs_r[None, :] * K + offs_k[:, None],
            mask=mask_k[:, None] & mask_r[None, :],
            other=0.0,
        )
        acc += tile_dot(x_tile, a_tile, PRECISION, UPCAST)
    out = out_ptr + slice_id * stride_os + rows[:, None] * stride_om + offs_r[None, :]
    mask = mask_m[:, None] & mask_r[None, :]
    if SPLIT_K == 1:
        tl.store(out, acc, mask=mask)
    else:
        tl.atomic_add(out, acc, mask=mask)


def _padded(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Repeat the last slice so the kernel always receives MAX_SLICES_PER_LAUNCH pointers."""
    return tensors + [tensors[-1]] * (MAX_SLICES_PER_LAUNCH - len(tensors))


@torch.library.custom_op("hyco_rag::lora_shrink", mutates_args=())
def lora_shrink(
    x: torch.Tensor,
    lora_a: list[torch.Tensor],
    slot_ids: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    active_slot_ids: torch.Tensor,
    slot_token_counts: torch.Tensor,
    slot_token_starts: torch.Tensor,
    max_tokens_per_slot: int,
    decode: bool,
) -> torch.Tensor:
    """Launch the shrink kernels; returns fp32 ``[len(lora_a), T, rank]`` (zero rows for -1).

    Args:
        x: ``[T, K]`` activations.
        lora_a: per slice a contiguous ``[S, rank, K]`` stack of the same dtype as ``x``.
        slot_ids .. slot_token_starts: :meth:`LoRASlotMetadata.meta_args`.
        max_tokens_per_slot: sizes the prefill grid (``LoRASlotMetadata.max_tokens_per_slot``).
        decode: run the per-row kernel instead of the slot-grouped one.
    """
    with torch.inference_mode():
        num_tokens, k = x.shape
        rank = lora_a[0].shape[1]
        out = torch.zeros(len(lora_a), num_tokens, rank, dtype=torch.float32, device=x.device)
        num_active = active_slot_ids.numel()
        if num_tokens == 0 or num_active == 0:
            return out
        block_r = next_power_of_2(rank)
        for first in range(0, len(lora_a), MAX_SLICES_PER_LAUNCH):
            group = lora_a[first : first + MAX_SLICES_PER_LAUNCH]
            a0, a1, a2 = _padded(group)
            out_group = out[first : first + len(group)]
            if decode:
                cfg = launch_config("shrink_decode", x.device)
                splits = split_k(cfg, x.device, programs=num_tokens * len(group), k=k)
                grid: tuple[int, ...] = (num_tokens * splits, len(group))
                _lora_shrink_decode_kernel[grid](
                    x, a0, a1, a2, out_group, slot_ids,
                    k, rank, x.stride(0), x.stride(1), out_group.stride(0), out_group.stride(1),
                    BLOCK_K=cfg["BLOCK_K"], BLOCK_R=max(2, block_r), SPLIT_K=splits,
                    num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                )  # fmt: skip
            else:
                cfg = launch_config("shrink_prefill", x.device)
                m_blocks = triton.cdiv(max_tokens_per_slot, cfg["BLOCK_M"])
                splits = split_k(cfg, x.device, programs=m_blocks * len(group) * num_active, k=k)
                grid = (m_blocks * splits, len(group), num_active)
                _lora_shrink_kernel[grid](
                    x, a0, a1, a2, out_group,
                    sorted_token_ids, active_slot_ids, slot_token_counts, slot_token_starts,
                    k, rank, x.stride(0), x.stride(1), out_group.stride(0), out_group.stride(1),
                    BLOCK_M=cfg["BLOCK_M"], BLOCK_K=cfg["BLOCK_K"], BLOCK_R=max(16, block_r),
                    SPLIT_K=splits, **dot_args(x.dtype),
                    num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                )  # fmt: skip
        return out


@lora_shrink.register_fake
def _lora_shrink_fake(
    x: torch.Tensor,
    lora_a: list[torch.Tensor],
    slot_ids: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    active_slot_ids: torch.Tensor,
    slot_token_counts: torch.Tensor,
    slot_token_starts: torch.Tensor,
    max_tokens_per_slot: int,
    decode: bool,
) -> torch.Tensor:
    """Shape-only twin of :func:`lora_shrink` for tracing."""
    return x.new_empty((len(lora_a), x.shape[0], lora_a[0].shape[1]), dtype=torch.float32)
