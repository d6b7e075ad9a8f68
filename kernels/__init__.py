"""Per-row LoRA deltas for serving many in-memory adapters at once (``hyco_rag.kernels``).

``add_lora(y, x, lora_a, lora_b, slot_ids, scale, meta=...)`` adds
``scale[slot] * B[slot] @ (A[slot] @ x[t])`` to every row of a base linear output whose slot is
not -1.  On CUDA it runs Triton shrink/expand kernels; elsewhere (or without Triton) a
vectorised torch implementation.  Build one :class:`LoRASlotMetadata` per forward step and pass
it to every layer.  A decode batch on CPU whose rows keep their adapters for many steps gathers
them once (``gather_row_adapters``) and adds them with ``add_lora_rows_torch``.  See
``docs/kernels.md``.
"""

from .lora_ops import BACKEND_ENV, MAX_RANK, Backend, add_lora, resolve_backend, triton_available
from .slot_metadata import LoRASlotMetadata
from .torch_reference import add_lora_rows_torch, add_lora_torch, gather_row_adapters, lora_expand_torch, lora_shrink_torch

__all__ = [
    "BACKEND_ENV",
    "MAX_RANK",
    "Backend",
    "LoRASlotMetadata",
    "add_lora",
    "add_lora_rows_torch",
    "add_lora_torch",
    "gather_row_adapters",
    "lora_expand_torch",
    "lora_shrink_torch",
    "resolve_backend",
    "triton_available",
]
