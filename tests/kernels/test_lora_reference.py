"""The torch implementation (reference and CPU production path) against the float64 oracle."""

from __future__ import annotations

import pytest
import torch

from hyco_rag.kernels import (
    LoRASlotMetadata,
    add_lora,
    add_lora_rows_torch,
    gather_row_adapters,
    lora_shrink_torch,
    torch_reference,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rank", [1, 2, 16, 64])
@pytest.mark.parametrize("pattern", ["distinct", "grouped", "random"])
def test_matches_oracle(lora_case, dtype, rank, pattern):
    case = lora_case(
        tokens=29, in_features=67, out_features=(45, 31), rank=rank, slots=8, dtype=dtype, slot_pattern=pattern
    )
    out = add_lora(case.y, case.x, case.lora_a, case.lora_b, case.slot_ids, case.scale, backend="torch")
    assert out is case.y
    case.assert_close(case.y)


@pytest.mark.parametrize(("pattern", "row_elements", "gather"),
                         [("distinct", 64, True), ("distinct", 10**6, False), ("grouped", 64, False)])  # fmt: skip
def test_strategy_choice(lora_case, pattern, row_elements, gather):
    """Decode-like mappings with small adapters gather per row; the rest group rows per slot."""
    case = lora_case(tokens=40, in_features=16, out_features=(8,), rank=2, slots=40 if pattern == "distinct" else 2,
                     slot_pattern=pattern, no_delta_fraction=0.0)  # fmt: skip
    meta = LoRASlotMetadata.make(case.slot_ids)
    assert torch_reference._use_row_gather(meta, row_elements) == gather


def test_row_gather_in_chunks(lora_case, monkeypatch):
    """A tiny chunk budget forces many chunks; the result must not change."""
    monkeypatch.setattr(torch_reference, "GATHER_CHUNK_ELEMENTS", 50)
    case = lora_case(tokens=24, in_features=33, out_features=(20, 12), rank=4, slots=24, slot_pattern="distinct")
    add_lora(case.y, case.x, case.lora_a, case.lora_b, case.slot_ids, case.scale, backend="torch")
    case.assert_close(case.y)


@pytest.mark.parametrize("slices", [1, 4])
def test_slices_and_per_slot_scale(lora_case, slices):
    case = lora_case(tokens=21, in_features=19, out_features=tuple(range(7, 7 + 3 * slices, 3)), rank=3, slots=5,
                     per_slot_scale=True)  # fmt: skip
    add_lora(case.y, case.x, case.lora_a, case.lora_b, case.slot_ids, case.scale, backend="torch")
    case.assert_close(case.y)


def test_zero_dim_scale_tensor(lora_case):
    case = lora_case(tokens=9, in_features=8, out_features=(6,), rank=2, slots=3)
    add_lora(case.y, case.x, case.lora_a[0], case.lora_b[0], case.slot_ids, torch.tensor(0.5), backend="torch")
    case.assert_close(case.y)


def test_no_delta_rows_untouched(lora_case):
    case = lora_case(tokens=12, in_features=10, out_features=(9,), rank=2, slots=3, slot_pattern="none")
    before = case.y.clone()
    add_lora(case.y, case.x, case.lora_a, case.lora_b, case.slot_ids, backend="torch")
    assert torch.equal(case.y, before)


def test_shrink_output_layout(lora_case):
    """fp32 [slices, T, rank], zero for rows without a delta."""
    case = lora_case(tokens=10, in_features=12, out_features=(5, 6), rank=3, slots=4, dtype=torch.bfloat16)
    meta = LoRASlotMetadata.make(case.slot_ids)
    buf = lora_shrink_torch(case.x, case.lora_a, meta)
    assert buf.shape == (2, 10, 3) and buf.dtype == torch.float32
    none = case.slot_ids < 0
    assert torch.all(buf[:, none] == 0)
    safe = case.slot_ids.long().clamp(min=0)
    expected = torch.einsum("trk,tk->tr", case.lora_a[1].double()[safe], case.x.double())
    torch.testing.assert_close(buf[1, ~none].double(), expected[~none], atol=1e-5, rtol=1e-5)


def test_empty_batch():
    y = torch.zeros(0, 4)
    out = add_lora(y, torch.zeros(0, 3), torch.zeros(2, 1, 3), torch.zeros(2, 4, 1), torch.zeros(0, dtype=torch.int32))
    assert out.shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seq", [1, 7])
def test_row_layout_matches_the_slot_path(dtype, seq):
    """``gather_row_adapters`` + ``add_lora_rows_torch`` (the engine's CPU decode path) add
    the same delta as ``add_lora`` with per-token slots: rows sharing a slot, rows without a
    delta (-1, untouched) and per-slot scales included."""
    g = torch.Generator().manual_seed(7)
    rows, in_features, out_features, rank, slots = 6, 24, 40, 3, 4
    lora_a = torch.randn(slots, rank, in_features, generator=g).to(dtype)
    lora_b = torch.randn(slots, out_features, rank, generator=g).to(dtype)
    scale = torch.tensor([0.5, 1.0, 2.0, 0.25])
    row_slots = torch.tensor([2, -1, 0, 2, 3, -1])
    x = torch.randn(rows, seq, in_features, generator=g).to(dtype)
    y = torch.randn(rows, seq, out_features, generator=g).to(dtype)
    expected = y.clone()
    add_lora(expected.view(rows * seq, -1), x.view(rows * seq, -1), lora_a, lora_b, row_slots.repeat_interleave(seq), scale,
             backend="torch")  # fmt: skip
    a_rows, b_rows = gather_row_adapters(lora_a, lora_b, row_slots, scale)
    assert a_rows.shape == (rows, in_features, rank) and b_rows.shape == (rows, rank, out_features)
    before = y.clone()
    assert add_lora_rows_torch(y, x, a_rows, b_rows, dtype) is y
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}
    torch.testing.assert_close(y, expected, **tolerance)
    assert torch.equal(y[row_slots < 0], before[row_slots < 0])  # rows without a delta are untouched
    assert not torch.equal(y[row_slots >= 0], before[row_slots >= 0])
