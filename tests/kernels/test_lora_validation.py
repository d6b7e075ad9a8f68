"""add_lora rejects bad inputs with a clear error before y is touched; backend selection."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hyco_rag.kernels import BACKEND_ENV, LoRASlotMetadata, add_lora, resolve_backend


def _inputs(dtype=torch.float32):
    torch.manual_seed(0)
    return {
        "y": torch.randn(4, 6, dtype=dtype),
        "x": torch.randn(4, 5, dtype=dtype),
        "lora_a": [torch.randn(3, 2, 5, dtype=dtype), torch.randn(3, 2, 5, dtype=dtype)],
        "lora_b": [torch.randn(3, 4, 2, dtype=dtype), torch.randn(3, 2, 2, dtype=dtype)],
        "slot_ids": torch.tensor([0, -1, 2, 1], dtype=torch.int32),
    }


def _replace(**changes):
    kwargs = _inputs()
    kwargs.update(changes)
    return kwargs


CASES = [
    ("y 1-D", _replace(y=torch.zeros(24)), ValueError, "y must be a 2-D"),
    ("x int", _replace(x=torch.zeros(4, 5, dtype=torch.int64)), TypeError, "x must be float16"),
    ("y/x dtype", _replace(y=torch.zeros(4, 6, dtype=torch.float16)), TypeError, "same dtype"),
    ("rows", _replace(y=torch.zeros(3, 6)), ValueError, "y has 3 rows"),
    ("slice count", _replace(lora_b=[torch.zeros(3, 6, 2)]), ValueError, "lora_a has 2 slices"),
    ("A in_features", _replace(lora_a=[torch.zeros(3, 2, 4), torch.zeros(3, 2, 4)]), ValueError, r"lora_a\[0\]"),
    ("A rank mismatch", _replace(lora_a=[torch.zeros(3, 2, 5), torch.zeros(3, 3, 5)]), ValueError, r"lora_a\[1\]"),
    ("B rank", _replace(lora_b=[torch.zeros(3, 4, 2), torch.zeros(3, 2, 3)]), ValueError, r"lora_b\[1\]"),
    ("B slots", _replace(lora_b=[torch.zeros(2, 4, 2), torch.zeros(3, 2, 2)]), ValueError, r"lora_b\[0\]"),
    ("out features", _replace(y=torch.zeros(4, 7)), ValueError, "7 columns"),
    ("adapter dtype", _replace(lora_a=[torch.zeros(3, 2, 5, dtype=torch.bfloat16)] * 2), TypeError,
     "adapters must match"),
    ("rank > 64", _replace(lora_a=[torch.zeros(3, 65, 5)] * 2, lora_b=[torch.zeros(3, 4, 65), torch.zeros(3, 2, 65)]),
     ValueError, "rank must be in 1..64"),
    ("slot length", _replace(slot_ids=torch.zeros(3, dtype=torch.int32)), ValueError, "length T=4"),
    ("slot dtype", _replace(slot_ids=torch.zeros(4)), TypeError, "int32 or int64"),
    ("slot range", _replace(slot_ids=torch.tensor([0, 3, -1, 1])), ValueError, "slot id 3 is out of range for 3"),
    ("slot < -1", _replace(slot_ids=torch.tensor([0, -2, -1, 1])), ValueError, ">= -1"),
    ("scale shape", _replace(scale=torch.ones(2)), ValueError, r"\[S=3\]"),
    ("scale dtype", _replace(scale=torch.ones(3, dtype=torch.int32)), TypeError, "floating tensor"),
    ("empty slices", _replace(lora_a=[]), TypeError, "non-empty sequence"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rejects_before_touching_y(kwargs, error, match):
    before = kwargs["y"].clone()
    with pytest.raises(error, match=match):
        add_lora(**kwargs)
    assert torch.equal(kwargs["y"], before)


def test_meta_for_other_rows_rejected():
    kwargs = _inputs()
    meta = LoRASlotMetadata.make(torch.zeros(5, dtype=torch.int32))
    with pytest.raises(ValueError, match="meta was built for 5 rows"):
        add_lora(**kwargs, meta=meta)


def test_inference_only():
    kwargs = _inputs()
    kwargs["lora_a"] = [a.requires_grad_() for a in kwargs["lora_a"]]
    with pytest.raises(RuntimeError, match="inference-only"):
        add_lora(**kwargs)
    with torch.no_grad():
        add_lora(**kwargs)


def test_backend_resolution(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert resolve_backend(None, cpu) == "torch"
    assert resolve_backend("auto", cpu) == "torch"
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert resolve_backend(None, cpu) == "torch"
    monkeypatch.setenv(BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        resolve_backend(None, cpu)
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("fast", cpu)


def test_works_without_triton():
    """The package imports and computes on CPU when triton cannot be imported at all."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        from hyco_rag.kernels import add_lora, triton_available
        assert not triton_available()
        y = torch.zeros(2, 3)
        add_lora(y, torch.ones(2, 4), torch.ones(1, 1, 4), torch.ones(1, 3, 1), torch.tensor([0, -1]))
        assert y[0].tolist() == [4.0, 4.0, 4.0] and y[1].tolist() == [0.0, 0.0, 0.0], y
        try:
            add_lora(y, torch.ones(2, 4), torch.ones(1, 1, 4), torch.ones(1, 3, 1), torch.tensor([0, -1]),
                     backend="triton")
        except ValueError as exc:
            assert "cannot be imported" in str(exc)
        else:
            raise AssertionError("backend='triton' without triton must fail")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    from hyco_rag.kernels import kernel_utils, triton_available

    if not triton_available():
        pytest.skip("triton is not installed")
    monkeypatch.setattr(kernel_utils, "interpreter_enabled", lambda: False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.device("cpu"))
