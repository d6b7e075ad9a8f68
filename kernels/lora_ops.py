"""Public entry point: add per-row LoRA deltas to a base linear's output.

``add_lora`` validates everything before touching ``y``, builds (or reuses) the step's
:class:`LoRASlotMetadata`, and dispatches:

* CUDA tensors with Triton importable -> the Triton shrink/expand kernels, the per-row decode
  kernels for up to ``decode_max_tokens`` rows (64 unless a tuned config says otherwise) and the
  slot-grouped kernels above;
* anything else -> the vectorised torch implementation in ``torch_reference``.

The backend can be forced with ``backend=`` or the ``HYCO_RAG_LORA_BACKEND`` environment variable
(``auto`` | ``torch`` | ``triton``).  ``triton`` on CPU tensors needs Triton's interpreter, which
must be switched on (``TRITON_INTERPRET=1``) before the kernels are first used: they are
decorated on first use, not at package import, for exactly this reason.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Literal

import torch

from .slot_metadata import LoRASlotMetadata
from .torch_reference import add_lora_torch

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "triton"]
BACKEND_ENV = "HYCO_RAG_LORA_BACKEND"
MAX_RANK = 64
_BACKENDS = ("auto", "torch", "triton")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.lru_cache(maxsize=1)
def _triton_modules() -> tuple[ModuleType, ModuleType, ModuleType] | None:
    """Import the Triton kernel modules on first use; None when Triton cannot be imported."""
    try:
        from . import kernel_utils, lora_expand, lora_shrink
    except ImportError as exc:
        logger.info("Triton LoRA kernels unavailable (%s); the torch implementation is used", exc)
        return None
    return kernel_utils, lora_shrink, lora_expand


def triton_available() -> bool:
    """Whether the Triton kernels can be imported on this machine."""
    return _triton_modules() is not None


def resolve_backend(backend: Backend | None, device: torch.device) -> Literal["torch", "triton"]:
    """The backend a call on ``device`` uses: ``backend``, else the environment, else auto.

    Raises:
        ValueError: unknown backend name, or ``triton`` where it cannot run.
    """
    choice = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")
    if choice not in _BACKENDS:
        source = "backend" if backend is not None else BACKEND_ENV
        raise ValueError(f"{source} must be one of {_BACKENDS}, got {choice!r}")
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if choice == "triton":
        modules = _triton_modules()
        if modules is None:
            raise ValueError("backend 'triton' requested but triton cannot be imported")
        if device.type != "cuda" and not modules[0].interpreter_enabled():
            raise ValueError(
                f"backend 'triton' on {device.type} tensors needs Triton's interpreter: set "
                "TRITON_INTERPRET=1 before the first LoRA kernel call of the process"
            )
    return choice  # type: ignore[return-value]


def _as_list(tensors: torch.Tensor | Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        return [tensors]
    result = list(tensors)
    if not result or not all(isinstance(t, torch.Tensor) for t in result):
        raise TypeError(f"{name} must be a tensor or a non-empty sequence of tensors")
    return result


def _validate(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: list[torch.Tensor],
    lora_b: list[torch.Tensor],
    slot_ids: torch.Tensor,
    scale: float | torch.Tensor,
) -> torch.Tensor | float:
    """Check shapes, dtypes and devices; returns the scale as a float or fp32 ``[S]`` tensor."""
    for name, t in (("y", y), ("x", x)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D [T, features] tensor, got {getattr(t, 'shape', type(t))}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    if y.dtype != x.dtype:
        raise TypeError(f"y ({y.dtype}) and x ({x.dtype}) must have the same dtype")
    num_tokens, in_features = x.shape
    if y.shape[0] != num_tokens:
        raise ValueError(f"y has {y.shape[0]} rows but x has {num_tokens}")
    if len(lora_a) != len(lora_b):
        raise ValueError(f"lora_a has {len(lora_a)} slices but lora_b has {len(lora_b)}")
    num_slots, rank = lora_a[0].shape[:2] if lora_a[0].dim() == 3 else (-1, -1)
    for i, (a, b) in enumerate(zip(lora_a, lora_b)):
        if a.dim() != 3 or a.shape[0] != num_slots or a.shape[1] != rank or a.shape[2] != in_features:
            raise ValueError(
                f"lora_a[{i}] must be [S, r, in_features] = [{num_slots}, {rank}, {in_features}] "
                f"(same S and r for every slice), got {tuple(a.shape)}"
            )
        if b.dim() != 3 or b.shape[0] != num_slots or b.shape[2] != rank:
            raise ValueError(f"lora_b[{i}] must be [S={num_slots}, out_features, r={rank}], got {tuple(b.shape)}")
        for name, t in ((f"lora_a[{i}]", a), (f"lora_b[{i}]", b)):
            if t.dtype != x.dtype:
                raise TypeError(f"{name} is {t.dtype} but x is {x.dtype}; adapters must match the activations")
    if not 1 <= rank <= MAX_RANK:
        raise ValueError(f"rank must be in 1..{MAX_RANK}, got {rank}")
    out_features = sum(b.shape[1] for b in lora_b)
    if y.shape[1] != out_features:
        raise ValueError(f"y has {y.shape[1]} columns but the slices of lora_b give {out_features}")
    if not isinstance(slot_ids, torch.Tensor) or slot_ids.dim() != 1 or slot_ids.shape[0] != num_tokens:
        got = getattr(slot_ids, "shape", type(slot_ids))
        raise ValueError(f"slot_ids must be a 1-D tensor of length T={num_tokens}, got {got}")
    if slot_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"slot_ids must be int32 or int64, got {slot_ids.dtype}")
    if isinstance(scale, torch.Tensor):
        if not scale.is_floating_point():
            raise TypeError(f"scale must be a float or a floating tensor, got {scale.dtype}")
        if scale.dim() == 0:
            scale = scale.expand(num_slots)
        if scale.dim() != 1 or scale.shape[0] != num_slots:
            raise ValueError(f"scale must be a scalar or a [S={num_slots}] tensor, got {tuple(scale.shape)}")
        scale = scale.to(torch.float32).contiguous()
    elif not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or a tensor, got {type(scale).__name__}")
    tensors = {"y": y, "x": x, "slot_ids": slot_ids, **{f"lora_a[{i}]": a for i, a in enumerate(lora_a)}}
    tensors.update({f"lora_b[{i}]": b for i, b in enumerate(lora_b)})
    if isinstance(scale, torch.Tensor):
        tensors["scale"] = scale
    for name, t in tensors.items():
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors.values()):
        raise RuntimeError("add_lora is inference-only (in-place, no autograd); call it under torch.no_grad()")
    return scale if isinstance(scale, torch.Tensor) else float(scale)


def add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor | Sequence[torch.Tensor],
    lora_b: torch.Tensor | Sequence[torch.Tensor],
    slot_ids: torch.Tensor,
    scale: float | torch.Tensor = 1.0,
    *,
    meta: LoRASlotMetadata | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """Add each row's own low-rank delta to a base linear output, in place.

    ``y[t] += scale[slot] * B[slot] @ (A[slot] @ x[t])`` for every row ``t`` whose
    ``slot_ids[t] >= 0``; ``B @ A`` is never materialised.

    Args:
        y: ``[T, out]`` base output (``out`` = the slices' out_features concatenated, e.g.
            gate | up); updated in place and returned.
        x: ``[T, in_features]`` input rows (batch and sequence flattened).
        lora_a: one ``[S, r, in_features]`` stack, or one per slice (slices share ``x``).
        lora_b: one ``[S, out_features_slice, r]`` stack per slice, in ``y``'s column order.
        slot_ids: int32/int64 ``[T]``; -1 = this row has no delta.
        scale: one float for every slot, or a per-slot ``[S]`` tensor.
        meta: the step's :class:`LoRASlotMetadata` built from the same ``slot_ids``; build it
            once per step and pass it to every layer to avoid a host sync per call.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``; None reads ``HYCO_RAG_LORA_BACKEND``.

    Returns:
        ``y``.

    Raises:
        ValueError / TypeError: on any shape, dtype, device or slot-range problem, before ``y``
            is modified.
        RuntimeError: when called with autograd recording (the op is inference-only).
    """
    a_list = _as_list(lora_a, "lora_a")
    b_list = _as_list(lora_b, "lora_b")
    scale = _validate(y, x, a_list, b_list, slot_ids, scale)
    if meta is None:
        meta = LoRASlotMetadata.make(slot_ids)
    elif meta.num_tokens != x.shape[0] or meta.device != x.device:
        raise ValueError(f"meta was built for {meta.num_tokens} rows on {meta.device}, but x has {x.shape[0]} rows on {x.device}")
    num_slots = a_list[0].shape[0]
    if meta.max_slot_id >= num_slots:
        raise ValueError(f"slot id {meta.max_slot_id} is out of range for {num_slots} delta slots")
    if meta.no_delta:
        return y
    if resolve_backend(backend, x.device) == "torch":
        return add_lora_torch(y, x, a_list, b_list, meta, scale)

    kernel_utils, lora_shrink, lora_expand = _triton_modules()  # type: ignore[misc]
    decode = meta.num_tokens <= kernel_utils.decode_max_tokens(x.device)
    a_list = [a.contiguous() for a in a_list]
    b_list = [b.contiguous() for b in b_list]
    args = (*meta.meta_args(), meta.max_tokens_per_slot, decode)
    buf = lora_shrink.lora_shrink(x, a_list, *args)
    per_slot = scale if isinstance(scale, torch.Tensor) else None
    lora_expand.lora_expand(y, buf, b_list, *args, per_slot, 1.0 if per_slot is not None else scale)
    return y
