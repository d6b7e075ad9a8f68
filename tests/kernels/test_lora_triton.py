"""The Triton kernels against the float64 oracle: on the GPU when there is one, else on CPU
under Triton's interpreter (small shapes, see conftest.py)."""

from __future__ import annotations

import json

import pytest
import torch

from hyco_rag.kernels import LoRASlotMetadata, add_lora

kernel_utils = pytest.importorskip("hyco_rag.kernels.kernel_utils", reason="needs triton")

#: Blocks far smaller than the defaults, so small test shapes span several M/N/K blocks and hit
#: every boundary mask; SPLIT_K fixed to 2 to exercise the atomic split-K reduction.
SMALL_BLOCKS = {
    "shrink_decode": {"BLOCK_K": 16, "SPLIT_K": 2},
    "shrink_prefill": {"BLOCK_M": 16, "BLOCK_K": 16, "SPLIT_K": 2},
    "expand_decode": {"BLOCK_N": 16},
    "expand_prefill": {"BLOCK_M": 16, "BLOCK_N": 16},
}


@pytest.fixture
def launch_configs(tmp_path, monkeypatch):
    """Install a launch-config file for the current device; returns a setter."""

    def install(configs: dict) -> None:
        name = "interpreter" if not torch.cuda.is_available() else torch.cuda.get_device_name()
        (tmp_path / kernel_utils.config_file_name(name)).write_text(json.dumps(configs))
        monkeypatch.setenv(kernel_utils.CONFIG_DIR_ENV, str(tmp_path))
        kernel_utils.clear_config_cache()

    yield install
    kernel_utils.clear_config_cache()


def _run(case, device, path, **kwargs):
    meta = LoRASlotMetadata.make(case.slot_ids)
    assert (meta.num_tokens <= kernel_utils.decode_max_tokens(device)) == (path == "decode")
    return add_lora(case.y, case.x, case.lora_a, case.lora_b, case.slot_ids, case.scale, meta=meta,
                    backend="triton", **kwargs)  # fmt: skip


@pytest.mark.parametrize("path", ["decode", "prefill"])
@pytest.mark.parametrize("blocks", ["default", "small"])
@pytest.mark.parametrize(
    ("dtype", "rank", "pattern", "per_slot_scale"),
    [
        (torch.float32, 1, "random", False),
        (torch.bfloat16, 2, "distinct", True),
        (torch.float16, 16, "grouped", False),
        (torch.bfloat16, 64, "grouped", True),
    ],
)
def test_add_lora_matches_oracle(lora_case, triton_device, launch_configs, path, blocks, dtype, rank, pattern,
                                 per_slot_scale):  # fmt: skip
    configs = dict(SMALL_BLOCKS) if blocks == "small" else {}
    configs["decode_max_tokens"] = 64 if path == "decode" else 0
    launch_configs(configs)
    case = lora_case(tokens=23, in_features=37, out_features=(29, 18), rank=rank, slots=6, dtype=dtype,
                     device=triton_device, slot_pattern=pattern, per_slot_scale=per_slot_scale)  # fmt: skip
    out = _run(case, triton_device, path)
    assert out is case.y
    case.assert_close(case.y)


@pytest.mark.parametrize("path", ["decode", "prefill"])
def test_more_slices_than_one_launch(lora_case, triton_device, launch_configs, path):
    """Four slices: launched as a group of three plus one, columns in order."""
    launch_configs({"decode_max_tokens": 64 if path == "decode" else 0})
    case = lora_case(tokens=9, in_features=20, out_features=(5, 17, 8, 11), rank=4, slots=3, device=triton_device)
    _run(case, triton_device, path)
    case.assert_close(case.y)


@pytest.mark.parametrize("path", ["decode", "prefill"])
def test_rows_without_delta_are_not_written(lora_case, triton_device, launch_configs, path):
    launch_configs({"decode_max_tokens": 64 if path == "decode" else 0})
    case = lora_case(tokens=12, in_features=16, out_features=(24,), rank=2, slots=4, device=triton_device,
                     no_delta_fraction=0.5, dtype=torch.bfloat16)  # fmt: skip
    none = (case.slot_ids < 0).cpu()
    before = case.y.cpu().clone()
    _run(case, triton_device, path)
    assert torch.equal(case.y.cpu()[none], before[none])
    case.assert_close(case.y)


def test_triton_agrees_with_torch_path(lora_case, triton_device):
    """Same rounding recipe: both backends agree to a couple of bf16 ulps of y."""
    case = lora_case(tokens=17, in_features=40, out_features=(33,), rank=8, slots=5, dtype=torch.bfloat16,
                     device=triton_device)  # fmt: skip
    y_torch = case.y.clone()
    add_lora(y_torch, case.x, case.lora_a, case.lora_b, case.slot_ids, case.scale, backend="torch")
    add_lora(case.y, case.x, case.lora_a, case.lora_b, case.slot_ids, case.scale, backend="triton")
    torch.testing.assert_close(case.y.float(), y_torch.float(), atol=3e-2, rtol=1e-2)


def test_custom_ops_opcheck(lora_case, triton_device):
    """Schema, fake (shape-only) implementations and mutation declarations agree with the kernels."""
    from hyco_rag.kernels import lora_expand, lora_shrink

    case = lora_case(tokens=6, in_features=16, out_features=(8, 8), rank=2, slots=3, device=triton_device)
    meta = LoRASlotMetadata.make(case.slot_ids)
    args = (*meta.meta_args(), meta.max_tokens_per_slot, True)
    torch.library.opcheck(lora_shrink.lora_shrink, (case.x, case.lora_a, *args))
    buf = lora_shrink.lora_shrink(case.x, case.lora_a, *args)
    torch.library.opcheck(lora_expand.lora_expand, (case.y, buf, case.lora_b, *args, None, 0.5))


def test_traces_under_torch_compile(lora_case, triton_device):
    """The ops trace into one graph (fullgraph) and compute the same result."""
    case = lora_case(tokens=7, in_features=16, out_features=(8,), rank=2, slots=3, device=triton_device)
    meta = LoRASlotMetadata.make(case.slot_ids)

    def step(y, x, a, b, *meta_args):
        buf = torch.ops.hyco_rag.lora_shrink(x, [a], *meta_args, meta.max_tokens_per_slot, True)
        torch.ops.hyco_rag.lora_expand(y, buf, [b], *meta_args, meta.max_tokens_per_slot, True, None, 0.5)
        return y

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    compiled(case.y, case.x, case.lora_a[0], case.lora_b[0], *meta.meta_args())
    case.assert_close(case.y)


def test_no_delta_launches_nothing(lora_case, triton_device, monkeypatch):
    from hyco_rag.kernels import lora_shrink

    def fail(*args, **kwargs):
        raise AssertionError("kernel launched for a step without deltas")

    monkeypatch.setattr(lora_shrink, "lora_shrink", fail)
    case = lora_case(tokens=5, in_features=8, out_features=(4,), rank=2, slots=2, device=triton_device,
                     slot_pattern="none")  # fmt: skip
    before = case.y.clone()
    add_lora(case.y, case.x, case.lora_a, case.lora_b, case.slot_ids, backend="triton")
    assert torch.equal(case.y, before)
