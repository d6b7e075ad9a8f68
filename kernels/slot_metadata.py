"""Per-step token-to-slot bookkeeping shared by every LoRA call of one forward pass.

A serving step runs the same slot mapping through every adapted layer, so the tokens are sorted
by slot once here and every kernel launch of the step reuses the result.  Building it is the
only place where the host waits for the device (one ``unique`` plus one small ``tolist``): the
few integers read back size the grids exactly, allow the "no delta at all" early exit, and let
``add_lora`` check slot ids against the adapter stack without a sync per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoRASlotMetadata:
    """Tokens grouped by delta slot, as the kernels and the torch reference consume them.

    Build it with :meth:`make`; the fields are read-only views of one step's mapping.

    Attributes:
        num_tokens: rows of the step (T).
        slot_ids: int32 ``[T]``, the mapping itself; -1 means "no delta".
        sorted_token_ids: int32 ``[T]``, row indices ordered by slot (rows without a delta
            first); the rows of active slot ``i`` are
            ``sorted_token_ids[slot_token_starts[i] : slot_token_starts[i] + slot_token_counts[i]]``.
        active_slot_ids: int32 ``[A]``, the distinct slots >= 0 present, ascending.
        slot_token_counts: int32 ``[A]``, rows per active slot.
        slot_token_starts: int32 ``[A]``, offset of each active slot's rows in ``sorted_token_ids``.
        active_slots_host / slot_token_counts_host / slot_token_starts_host: the same three on
            the host, for the torch path's per-slot grouping without further syncs.
        max_tokens_per_slot: largest entry of ``slot_token_counts`` (0 when no slot is active).
        max_slot_id: largest slot id present (-1 when none); checked against the adapter stack.
    """

    num_tokens: int
    slot_ids: torch.Tensor
    sorted_token_ids: torch.Tensor
    active_slot_ids: torch.Tensor
    slot_token_counts: torch.Tensor
    slot_token_starts: torch.Tensor
    active_slots_host: tuple[int, ...]
    slot_token_counts_host: tuple[int, ...]
    slot_token_starts_host: tuple[int, ...]
    max_tokens_per_slot: int
    max_slot_id: int

    @classmethod
    def make(cls, slot_ids: torch.Tensor) -> LoRASlotMetadata:
        """Sort the rows of one step by slot.

        Args:
            slot_ids: integer ``[T]`` tensor (int32 or int64) on the device of the activations;
                entry ``t`` is the delta slot of row ``t``, or -1 for none.

        Raises:
            TypeError: ``slot_ids`` is not an integer tensor.
            ValueError: ``slot_ids`` is not 1-D, or holds a value below -1.
        """
        if not isinstance(slot_ids, torch.Tensor):
            raise TypeError(f"slot_ids must be a torch.Tensor, got {type(slot_ids).__name__}")
        if slot_ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"slot_ids must be int32 or int64, got {slot_ids.dtype}")
        if slot_ids.dim() != 1:
            raise ValueError(f"slot_ids must be 1-D [T], got shape {tuple(slot_ids.shape)}")
        ids = slot_ids.to(torch.int32).contiguous()
        num_tokens = ids.numel()
        device = ids.device
        if num_tokens == 0:
            empty = torch.empty(0, dtype=torch.int32, device=device)
            return cls(0, ids, empty, empty, empty, empty, (), (), (), 0, -1)

        sorted_ids, order = torch.sort(ids, stable=True)
        slots, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        # One read-back for everything the host needs: slots, counts and starts.
        stacked = torch.stack([slots, counts.to(slots.dtype), starts.to(slots.dtype)])
        slots_host, counts_host, starts_host = stacked.tolist()
        if slots_host[0] < -1:
            raise ValueError(f"slot_ids must be >= -1 (-1 = no delta), found {slots_host[0]}")
        first = 1 if slots_host[0] == -1 else 0
        active = slots_host[first:]
        return cls(
            num_tokens=num_tokens,
            slot_ids=ids,
            sorted_token_ids=order.to(torch.int32),
            active_slot_ids=slots[first:].to(torch.int32),
            slot_token_counts=counts[first:].to(torch.int32),
            slot_token_starts=starts[first:].to(torch.int32),
            active_slots_host=tuple(active),
            slot_token_counts_host=tuple(counts_host[first:]),
            slot_token_starts_host=tuple(starts_host[first:]),
            max_tokens_per_slot=max(counts_host[first:], default=0),
            max_slot_id=active[-1] if active else -1,
        )

    @property
    def num_active_slots(self) -> int:
        """Distinct slots >= 0 present in the step."""
        return len(self.active_slots_host)

    @property
    def no_delta(self) -> bool:
        """True when no row has a delta, so every LoRA call of the step can return at once."""
        return not self.active_slots_host

    @property
    def device(self) -> torch.device:
        """Device of the mapping tensors."""
        return self.slot_ids.device

    def meta_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The device tensors the kernels take, in kernel-argument order.

        ``(slot_ids, sorted_token_ids, active_slot_ids, slot_token_counts, slot_token_starts)``
        """
        return (
            self.slot_ids,
            self.sorted_token_ids,
            self.active_slot_ids,
            self.slot_token_counts,
            self.slot_token_starts,
        )
