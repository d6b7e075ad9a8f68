"""Adam over stacked per-passage LoRAs that only steps the passages present in a step.

Stage 1 trains G passages' LoRAs as slots of one ``[G, ...]`` tensor per target.  When a step
holds rows of only some passages, torch's Adam would still move the others (momentum with a
zero gradient).  This optimiser keeps per-slot step counts and updates only the slots marked
active, so training G passages together is exactly G independent Adam runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class SlotAdam:
    """Adam (no weight decay) for tensors whose first dimension is the passage slot."""

    def __init__(
        self, params: Sequence[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        if not params:
            raise ValueError("SlotAdam needs parameters")
        slots = {p.shape[0] for p in params}
        if len(slots) != 1:
            raise ValueError(f"all parameters must share the slot dimension, got {sorted(slots)}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.num_slots = slots.pop()
        self.steps = torch.zeros(self.num_slots, dtype=torch.float32)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """Update the slots where ``active`` ([G] bool) is true."""
        active = active.to(torch.bool).cpu()
        if not bool(active.any()):
            return
        self.steps += active.float()
        beta1, beta2 = self.betas
        index = active.nonzero().squeeze(1)
        t = self.steps[index]
        correction1 = 1 - beta1**t
        correction2 = 1 - beta2**t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            idx = index.to(p.device)
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = p.grad.index_select(0, idx)
            m_new = m.index_select(0, idx).mul_(beta1).add_(g, alpha=1 - beta1)
            v_new = v.index_select(0, idx).mul_(beta2).addcmul_(g, g, value=1 - beta2)
            m.index_copy_(0, idx, m_new)
            v.index_copy_(0, idx, v_new)
            c1 = correction1.to(p.device, p.dtype).view(shape)
            c2 = correction2.to(p.device, p.dtype).view(shape)
            update = (m_new / c1) / ((v_new / c2).sqrt() + self.eps)
            p.index_copy_(0, idx, p.index_select(0, idx) - self.lr * update)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
