"""Pieces shared by both training stages: frozen-model forward with losses at label positions,
shared LoRA initialisation, and the per-row delta context for a group of passages."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from hyco_rag.dyprag.delta import DeltaBatch
from hyco_rag.dyprag.injection import DeltaInjector
from hyco_rag.dyprag.training.data import IGNORE


@dataclass
class LabelLogits:
    """Logits at the positions that carry a label (the LM head never sees the others)."""

    logits: torch.Tensor  # [M, vocab] fp32
    targets: torch.Tensor  # [M]
    rows: torch.Tensor  # [M] batch row of each position


def freeze(model: nn.Module) -> None:
    """The served model is never trained: no parameter needs a gradient."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def label_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> LabelLogits:
    """Run the decoder on the batch, then the LM head only where ``labels`` has a target.

    Only ~5-60% of the positions carry a label; skipping the 49k-way head elsewhere saves a
    large part of a 135M model's step.
    """
    device = next(model.parameters()).device
    decoder = model.get_decoder()
    hidden = decoder(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).last_hidden_state
    labels = batch["labels"].to(device)
    select = labels[:, 1:] != IGNORE
    rows = torch.arange(labels.shape[0], device=device)[:, None].expand_as(select)[select]
    h = hidden[:, :-1][select]
    logits = model.get_output_embeddings()(h).float()
    return LabelLogits(logits, labels[:, 1:][select], rows)


def row_mean(values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Mean of ``values`` per batch row (rows without positions give 0)."""
    sums = torch.zeros(num_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    counts = torch.zeros(num_rows, dtype=values.dtype, device=values.device).index_add(0, rows, torch.ones_like(values))
    return sums / counts.clamp_min(1)


def shared_lora_init(shapes: dict[str, tuple[int, int]], rank: int, seed: int) -> dict[str, torch.Tensor]:
    """One fixed ``A0 [r, in]`` per target (PEFT's kaiming-uniform bound ``1/sqrt(in)``).

    Every passage's LoRA starts from the same ``A0`` (and ``B = 0``), as PRAG's shared base
    adapter does: the collected LoRAs then live in one common gauge, which is what makes an
    MSE between a generated and a collected ``(A, B)`` meaningful.
    """
    generator = torch.Generator().manual_seed(seed)
    init = {}
    for name, (in_features, _) in shapes.items():
        bound = 1.0 / math.sqrt(in_features)
        init[name] = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
    return init


@contextlib.contextmanager
def group_deltas(
    injector: DeltaInjector,
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    slots: torch.Tensor,
    scaling: float,
) -> Iterator[None]:
    """Apply ``factors`` (``A [G, r, in]``, ``B [G, out, r]``, may require grad) with row ``i``
    of the batch using slot ``slots[i]``."""
    num = next(iter(factors.values()))[0].shape[0]
    device = next(iter(factors.values()))[0].device
    scale = torch.full((num,), float(scaling), device=device)
    batch = DeltaBatch(dict(factors), scale, slots.to(device))
    with injector.apply(batch):
        yield
