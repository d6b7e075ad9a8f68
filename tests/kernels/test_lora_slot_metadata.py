"""LoRASlotMetadata: the per-step sort of rows by slot."""

from __future__ import annotations

import pytest
import torch

from hyco_rag.kernels import LoRASlotMetadata


def test_groups_rows_by_slot():
    ids = torch.tensor([2, -1, 0, 2, 2, -1, 0, 5], dtype=torch.int64)
    meta = LoRASlotMetadata.make(ids)
    assert meta.num_tokens == 8 and meta.slot_ids.dtype == torch.int32
    assert meta.active_slots_host == (0, 2, 5)
    assert meta.slot_token_counts_host == (2, 3, 1)
    assert meta.max_tokens_per_slot == 3 and meta.max_slot_id == 5 and not meta.no_delta
    assert meta.active_slot_ids.tolist() == [0, 2, 5]
    assert meta.slot_token_counts.tolist() == [2, 3, 1]
    for slot, start, count in zip(meta.active_slots_host, meta.slot_token_starts_host, meta.slot_token_counts_host):
        rows = meta.sorted_token_ids[start : start + count]
        assert torch.all(ids[rows.long()] == slot)
    assert meta.slot_token_starts.tolist() == list(meta.slot_token_starts_host)
    assert all(t.dtype == torch.int32 for t in meta.meta_args())


def test_all_minus_one_is_no_delta():
    meta = LoRASlotMetadata.make(torch.full((5,), -1, dtype=torch.int32))
    assert meta.no_delta and meta.num_active_slots == 0 and meta.max_slot_id == -1 and meta.max_tokens_per_slot == 0


def test_empty():
    meta = LoRASlotMetadata.make(torch.zeros(0, dtype=torch.int32))
    assert meta.no_delta and meta.num_tokens == 0


@pytest.mark.parametrize(
    ("ids", "error", "match"),
    [
        (torch.tensor([0, -2], dtype=torch.int32), ValueError, ">= -1"),
        (torch.tensor([0.0, 1.0]), TypeError, "int32 or int64"),
        (torch.zeros(2, 2, dtype=torch.int32), ValueError, "1-D"),
        ([0, 1], TypeError, "torch.Tensor"),
    ],
)
def test_rejects_bad_mappings(ids, error, match):
    with pytest.raises(error, match=match):
        LoRASlotMetadata.make(ids)
