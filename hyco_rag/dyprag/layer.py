"""The delta hook on one linear module: ``y = W x + s * B (A x)``, per batch row.

Two paths, one maths:

* **serving** (no autograd): :func:`hyco_rag.kernels.add_lora` adds the delta to the linear's
  output *in place* (Triton on CUDA); on the torch backend (CPU) every row's adapter is
  gathered once per prepared batch (:meth:`DeltaBatch.row_adapters`) and added with two
  batched matmuls (:func:`hyco_rag.kernels.add_lora_rows_torch`).  It is the one
  function the kernels replace; ``B @ A`` is never formed and ``W`` is never touched.
* **training** (autograd on, some factor or input requires grad): ``add_lora`` is
  inference-only by design (in-place), so :func:`lora_delta_autograd` computes the same sum
  out of place with gathers and einsums, differentiable with respect to the factors and ``x``.

Why not fuse gate and up as slices of one ``add_lora`` call?  HF's MLP runs them as two
separate ``nn.Linear`` modules with two output tensors, and slices must write one ``[T, out]``
tensor; stitching the two outputs together and apart again costs more memory traffic than the
second (tiny, rank-r) call saves.  The fused path pays only with a fused gate|up base matmul.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn

from hyco_rag.dyprag.delta import DeltaBatch


def lora_delta_autograd(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: torch.Tensor,
    row_slots: torch.Tensor,
) -> torch.Tensor:
    """Differentiable ``s[slot_b] * B[slot_b] @ (A[slot_b] @ x[b, t])``, zero where slot is -1.

    Args:
        x: ``[batch, seq, in]``.
        lora_a: ``[S, r, in]``; lora_b: ``[S, out, r]``; scale: ``[S]``.
        row_slots: ``[batch]`` slot of each row (-1 = none).

    Returns:
        ``[batch, seq, out]`` delta (never ``B @ A``: the rank-r intermediate is formed instead).
    """
    has = row_slots >= 0
    index = row_slots.clamp(min=0)
    a_rows = lora_a.index_select(0, index).to(x.dtype)  # [batch, r, in]
    b_rows = lora_b.index_select(0, index).to(x.dtype)  # [batch, out, r]
    s_rows = (scale.index_select(0, index) * has.to(scale.dtype)).to(x.dtype)  # [batch]
    h = torch.einsum("bti,bri->btr", x, a_rows)
    return torch.einsum("btr,bor->bto", h, b_rows) * s_rows[:, None, None]


@dataclass
class StepState:
    """What every hook of one application shares: the deltas and the per-step slot metadata.

    The token-to-slot metadata depends only on (batch, seq) of the step, so it is built once
    per step by the first hooked layer and reused by the other ~90 calls of that step.
    """

    batch: DeltaBatch
    thread: int | None = None  # the applying thread; forwards of other threads are left alone
    _meta_key: tuple[int, int] | None = None
    _meta: object = None
    _token_slots: torch.Tensor | None = None
    calls: int = 0

    def row_slots(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Slot of each row of this step (a broadcast batch gives every row slot 0)."""
        if self.batch.broadcast:
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        return self.batch.row_slots.to(device)

    def token_slots(self, batch_size: int, seq_len: int, device: torch.device) -> tuple[torch.Tensor, object]:
        from hyco_rag.kernels import LoRASlotMetadata

        if self._meta_key != (batch_size, seq_len) or self._token_slots is None or self._token_slots.device != device:
            slots = self.row_slots(batch_size, device)
            self._token_slots = slots.repeat_interleave(seq_len)
            self._meta = LoRASlotMetadata.make(self._token_slots)
            self._meta_key = (batch_size, seq_len)
        return self._token_slots, self._meta


class DeltaHook:
    """Forward hook adding the current request's delta to one target linear's output."""

    def __init__(self, name: str, module: nn.Linear, state: StepState) -> None:
        self.name = name
        self.module = module
        self.state = state
        pair = state.batch.factors.get(name)
        self.lora_a: torch.Tensor | None = pair[0] if pair is not None else None
        self.lora_b: torch.Tensor | None = pair[1] if pair is not None else None

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        lora_a, lora_b = self.lora_a, self.lora_b
        if lora_a is None or lora_b is None:
            return None
        if self.state.thread is not None and threading.get_ident() != self.state.thread:
            return None  # another thread's forward of the same model (e.g. passage encoding)
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            raise RuntimeError(f"delta hook on {self.name!r}: expected a tensor input, got {type(x).__name__}")
        batch = self.state.batch
        rows = x.shape[0] if x.dim() >= 2 else 1
        if x.dim() < 2 or (not batch.broadcast and rows != batch.num_rows):
            raise RuntimeError(
                f"delta hook on {self.name!r}: the forward has {rows} batch rows but deltas were "
                f"given for {batch.num_rows}; apply one delta (or None) per row (beam search "
                "and other batch-expanding decoding are not supported)"
            )
        self.state.calls += 1
        x3 = x.reshape(rows, -1, x.shape[-1])
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or output.requires_grad or lora_a.requires_grad or lora_b.requires_grad or batch.scale.requires_grad
        )
        if needs_grad:
            delta = lora_delta_autograd(x3, lora_a, lora_b, batch.scale, self.state.row_slots(rows, x.device))
            return output + delta.reshape(output.shape)
        from hyco_rag.kernels import add_lora, add_lora_rows_torch, resolve_backend

        if resolve_backend(None, x.device) == "torch":
            # Per-row adapters gathered once per prepared batch: two bmm per call.
            a_rows, b_rows = batch.row_adapters(self.name, rows)
            y3 = output.reshape(rows, -1, output.shape[-1])  # a view unless output is non-contiguous
            add_lora_rows_torch(y3, x3, a_rows, b_rows, lora_a.dtype)
            return None if y3.data_ptr() == output.data_ptr() else y3.reshape(output.shape)
        seq = x3.shape[1]
        token_slots, meta = self.state.token_slots(rows, seq, x.device)
        y2 = output.reshape(rows * seq, output.shape[-1])
        if y2.data_ptr() != output.data_ptr():  # reshape copied (non-contiguous output)
            y2 = y2.contiguous()
            add_lora(y2, x3.reshape(rows * seq, -1), lora_a, lora_b, token_slots, batch.scale, meta=meta)
            return y2.reshape(output.shape)
        add_lora(y2, x3.reshape(rows * seq, -1), lora_a, lora_b, token_slots, batch.scale, meta=meta)
        return output
