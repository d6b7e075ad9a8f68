"""Shared cases, float64 oracle and device selection for the LoRA kernel tests.

Without a GPU the Triton kernels run under Triton's CPU interpreter.  ``@triton.jit`` reads
``TRITON_INTERPRET`` when a kernel is *decorated*, and ``hyco_rag.kernels`` decorates its kernels
on first use (not at import), so setting the variable here, while pytest collects this folder and
before any test runs, is early enough even if another test module imported the package already.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

#: (atol, rtol) against the float64 oracle; bf16/fp16 also round the rank-r intermediate.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (6e-2, 2e-2),
}


@dataclass
class LoraCase:
    """One random problem: inputs of ``add_lora`` plus the float64 expected output."""

    y: torch.Tensor
    x: torch.Tensor
    lora_a: list[torch.Tensor]
    lora_b: list[torch.Tensor]
    slot_ids: torch.Tensor
    scale: float | torch.Tensor
    expected: torch.Tensor

    def assert_close(self, actual: torch.Tensor) -> None:
        atol, rtol = TOLERANCES[self.y.dtype]
        torch.testing.assert_close(actual.double().cpu(), self.expected, atol=atol, rtol=rtol)


def float64_oracle(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: list[torch.Tensor],
    lora_b: list[torch.Tensor],
    slot_ids: torch.Tensor,
    scale: float | torch.Tensor,
) -> torch.Tensor:
    """``y + scale[slot] * B[slot] @ A[slot] @ x`` per row in float64, independent of the code under test."""
    x64 = x.double().cpu()
    slots = slot_ids.long().cpu()
    has = slots >= 0
    safe = slots.clamp(min=0)
    if isinstance(scale, torch.Tensor):
        row_scale = scale.double().cpu()[safe]
    else:
        row_scale = torch.full_like(safe, scale, dtype=torch.float64)
    parts = []
    for a, b in zip(lora_a, lora_b):
        h = torch.einsum("trk,tk->tr", a.double().cpu()[safe], x64)
        delta = torch.einsum("tnr,tr->tn", b.double().cpu()[safe], h)
        parts.append(delta * (row_scale * has).unsqueeze(-1))
    return y.double().cpu() + torch.cat(parts, dim=1)


def make_case(
    *,
    tokens: int,
    in_features: int,
    out_features: tuple[int, ...],
    rank: int,
    slots: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    no_delta_fraction: float = 0.25,
    slot_pattern: str = "random",
    per_slot_scale: bool = False,
    seed: int = 0,
) -> LoraCase:
    """Random activations and adapters scaled so the delta and ``y`` are both O(1).

    ``slot_pattern``: ``random`` (uniform over slots), ``grouped`` (runs of rows per slot, as in
    a prefill of several requests), ``distinct`` (row t uses slot t, as in decode) or ``none``.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).to(dtype=dtype, device=device)

    x = randn(tokens, in_features)
    lora_a = [randn(slots, rank, in_features, std=in_features**-0.5) for _ in out_features]
    lora_b = [randn(slots, n, rank, std=rank**-0.5) for n in out_features]
    if slot_pattern == "random":
        ids = torch.randint(0, slots, (tokens,), generator=gen)
    elif slot_pattern == "grouped":
        ids = torch.arange(tokens) * slots // max(tokens, 1)
    elif slot_pattern == "distinct":
        ids = torch.arange(tokens) % slots
    elif slot_pattern == "none":
        ids = torch.full((tokens,), -1)
    else:
        raise ValueError(slot_pattern)
    ids[torch.rand(tokens, generator=gen) < no_delta_fraction] = -1
    slot_ids = ids.to(torch.int32).to(device)
    scale: float | torch.Tensor = (
        (torch.rand(slots, generator=gen) * 2).to(device) if per_slot_scale else 0.5
    )
    y = randn(tokens, sum(out_features))
    return LoraCase(y, x, lora_a, lora_b, slot_ids, scale, float64_oracle(y, x, lora_a, lora_b, slot_ids, scale))


@pytest.fixture
def lora_case() -> Callable[..., LoraCase]:
    """Factory of random :class:`LoraCase` problems (see :func:`make_case`)."""
    return make_case


@pytest.fixture
def triton_device() -> torch.device:
    """Where the Triton kernels run: the GPU, else the interpreter on CPU; skips otherwise."""
    from hyco_rag.kernels import triton_available

    if not triton_available():
        pytest.skip("triton is not installed")
    if torch.cuda.is_available():
        return torch.device("cuda")
    from hyco_rag.kernels import kernel_utils

    if not kernel_utils.interpreter_enabled():
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")
    return torch.device("cpu")
