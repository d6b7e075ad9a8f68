"""Delta hooks: y = W x + s * B (A x) per row, scoped, never touching weights, NaN rejected."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hyco_rag.dyprag import (
    DeltaBatch,
    DeltaConfig,
    DeltaInjector,
    DeltasAlreadyAppliedError,
    DeltaValueError,
    LoRADelta,
    deltas_active,
)

from .conftest import assert_bit_identical, hook_count, snapshot


class Block(nn.Module):
    """Two linears named like an MLP so the default targets match."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up_proj = nn.Linear(12, 20, bias=True)
        self.down_proj = nn.Linear(20, 12, bias=False)
        self.other = nn.Linear(12, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.relu(self.up_proj(x))) + self.other(x)


def random_delta(block: Block, rank: int, seed: int, scaling: float = 1.0) -> LoRADelta:
    g = torch.Generator().manual_seed(seed)
    return LoRADelta(
        {
            "up_proj": (torch.randn(rank, 12, generator=g), torch.randn(20, rank, generator=g)),
            "down_proj": (torch.randn(rank, 20, generator=g), torch.randn(12, rank, generator=g)),
        },
        scaling,
    )


def dense_reference(block: Block, x: torch.Tensor, deltas: list[LoRADelta | None]) -> torch.Tensor:
    """float64 forward with W + s * B @ A materialised per row (only here, as the reference)."""
    rows = []
    for row, delta in zip(x.double(), deltas):
        def linear(name: str, h: torch.Tensor, delta: LoRADelta | None = delta) -> torch.Tensor:
            module = getattr(block, name)
            w = module.weight.double()
            if delta is not None and name in delta.factors:
                a, b = delta.factors[name]
                w = w + delta.scaling * b.double() @ a.double()
            out = h @ w.t()
            return out + module.bias.double() if module.bias is not None else out

        hidden = torch.relu(linear("up_proj", row))
        other = row @ block.other.weight.double().t() + block.other.bias.double()
        rows.append(linear("down_proj", hidden) + other)
    return torch.stack(rows)


@pytest.mark.parametrize("grad", [False, True], ids=["serving-path", "autograd-path"])
def test_per_row_deltas_match_dense_reference(grad):
    block = Block()
    d1, d3 = random_delta(block, 2, 1, scaling=0.5), random_delta(block, 3, 2)  # ranks differ: padded
    deltas = [d1, None, d3, d1]
    x = torch.randn(4, 5, 12)
    injector = DeltaInjector(block)
    assert sorted(injector.targets) == ["down_proj", "up_proj"]
    with torch.set_grad_enabled(grad), injector.apply(deltas) as state:
        y = block(x)
    assert state.calls == 2
    expected = dense_reference(block, x, deltas)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(y[1], block(x[1:2])[0])  # the row without a delta is the base output


def test_broadcast_delta_applies_to_every_row():
    block = Block()
    delta = random_delta(block, 2, 5)
    x = torch.randn(3, 4, 12)
    with torch.no_grad(), DeltaInjector(block).apply(delta):
        y = block(x)
    torch.testing.assert_close(y.double(), dense_reference(block, x, [delta] * 3), rtol=1e-4, atol=1e-4)


def test_autograd_path_gradients_match_dense():
    block = Block()
    for p in block.parameters():
        p.requires_grad_(False)
    a = torch.randn(2, 2, 12, requires_grad=True)
    b = torch.randn(2, 20, 2, requires_grad=True)
    x = torch.randn(2, 3, 12)
    batch = DeltaBatch({"up_proj": (a, b)}, torch.tensor([1.0, 0.5]), torch.tensor([1, 0]))
    with DeltaInjector(block).apply(batch):
        block(x).pow(2).sum().backward()
    grads = (a.grad.clone(), b.grad.clone())
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    outs = []
    for row, slot, s in ((0, 1, 0.5), (1, 0, 1.0)):
        w = block.up_proj.weight + s * b2[slot] @ a2[slot]
        h = torch.relu(x[row] @ w.t() + block.up_proj.bias)
        outs.append(block.down_proj(h) + block.other(x[row]))
    torch.stack(outs).pow(2).sum().backward()
    torch.testing.assert_close(grads[0], a2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1], b2.grad, rtol=1e-4, atol=1e-5)


def test_weights_bit_identical_and_hooks_removed_after_exit_and_exception():
    block = Block()
    before = snapshot(block)
    injector = DeltaInjector(block)
    with torch.no_grad(), injector.apply([random_delta(block, 2, 1)]):
        assert deltas_active(block) and hook_count(block) == 2
        block(torch.randn(1, 2, 12))
    assert hook_count(block) == 0 and not deltas_active(block)
    assert_bit_identical(block, before)
    with pytest.raises(KeyError, match="boom"), torch.no_grad(), injector.apply([random_delta(block, 2, 1)]):
        block(torch.randn(1, 2, 12))
        raise KeyError("boom")
    assert hook_count(block) == 0 and not deltas_active(block)
    assert_bit_identical(block, before)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_deltas_rejected_before_anything_is_applied(bad):
    block = Block()
    before = snapshot(block)
    delta = random_delta(block, 2, 1)
    delta.factors["down_proj"][1][3, 1] = bad
    with pytest.raises(DeltaValueError, match="down_proj.*NaN/Inf"):
        with DeltaInjector(block).apply([None, delta]):
            pytest.fail("the body must not run")
    assert hook_count(block) == 0 and not deltas_active(block)
    assert_bit_identical(block, before)
    with pytest.raises(DeltaValueError, match="NaN/Inf"):
        delta.validate()


def test_wrong_module_shape_or_rank_rejected():
    block = Block()
    injector = DeltaInjector(block)
    with pytest.raises(DeltaValueError, match="not a target"):
        with injector.apply([LoRADelta({"other": (torch.zeros(2, 12), torch.zeros(12, 2))})]):
            pass
    with pytest.raises(DeltaValueError, match="another model"):
        with injector.apply([LoRADelta({"up_proj": (torch.zeros(2, 13), torch.zeros(20, 2))})]):
            pass
    with pytest.raises(DeltaValueError, match="ranks"):
        LoRADelta({"up_proj": (torch.zeros(2, 12), torch.zeros(20, 3))})
    with pytest.raises(DeltaValueError, match="rank 65"):
        with injector.apply([LoRADelta({"up_proj": (torch.zeros(65, 12), torch.zeros(20, 65))})]):
            pass
    assert hook_count(block) == 0


def test_nested_application_refused():
    block = Block()
    injector = DeltaInjector(block)
    with injector.apply([random_delta(block, 2, 1)]):
        with pytest.raises(DeltasAlreadyAppliedError):
            with injector.apply([random_delta(block, 2, 2)]):
                pass
        assert hook_count(block) == 2  # the outer application is intact
    assert hook_count(block) == 0


def test_hooks_act_only_on_the_applying_thread():
    """While one thread has deltas applied, a forward of the same model on another thread sees
    the unmodified model (the engine encodes passages beside its decode thread)."""
    import threading

    block = Block()
    delta = random_delta(block, 2, 3)
    x = torch.randn(1, 4, 12)
    with torch.no_grad():
        base = block(x)
        inside: dict[str, torch.Tensor] = {}
        with DeltaInjector(block).apply([delta]):
            assert deltas_active(block) and deltas_active(block, on_this_thread=True)
            inside["here"] = block(x)

            def elsewhere() -> None:
                inside["active there"] = torch.tensor(deltas_active(block, on_this_thread=True))
                inside["there"] = block(x)

            thread = threading.Thread(target=elsewhere)
            thread.start()
            thread.join()
    torch.testing.assert_close(inside["here"].double(), dense_reference(block, x, [delta]), rtol=1e-4, atol=1e-4)
    assert torch.equal(inside["there"], base) and not bool(inside["active there"])
    assert not deltas_active(block) and hook_count(block) == 0


def test_batch_size_mismatch_is_a_clear_error():
    block = Block()
    with pytest.raises(RuntimeError, match="2 batch rows but deltas were given for 3"):
        with torch.no_grad(), DeltaInjector(block).apply([None, random_delta(block, 2, 1), None]):
            block(torch.randn(2, 4, 12))
    assert hook_count(block) == 0


def test_combine_is_the_exact_sum_or_mean():
    block = Block()
    deltas = [random_delta(block, 2, i, scaling=s) for i, s in ((1, 1.0), (2, 0.5), (3, 2.0))]

    def dense(delta: LoRADelta, name: str) -> torch.Tensor:
        a, b = delta.factors[name]
        return delta.scaling * b.double() @ a.double()

    for mode, factor in (("sum", 1.0), ("mean", 1 / 3)):
        combined = LoRADelta.combine(deltas, mode)
        assert combined.rank == 6
        for name in ("up_proj", "down_proj"):
            expected = factor * sum(dense(d, name) for d in deltas)
            torch.testing.assert_close(dense(combined, name), expected)
    with pytest.raises(ValueError, match="combine mode"):
        LoRADelta.combine(deltas, "max")


def test_delta_config_matching_rules():
    names = ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj", "model.layers.0.self_attn.q_proj"]
    assert [n for n in names if DeltaConfig().matches(n)] == names[:2]
    assert [n for n in names if DeltaConfig(target_modules=[".q_proj"]).matches(n)] == names[2:]
    regex = DeltaConfig(target_modules=r"model\.layers\.1\..*_proj")
    assert [n for n in names if regex.matches(n)] == names[1:2]
    assert not DeltaConfig(target_modules=r"up_proj").matches(names[0])  # full match, not search
    assert [n for n in names if DeltaConfig(exclude_modules=r".*layers\.0\..*").matches(n)] == names[1:2]
    for bad in ({"rank": 0}, {"combine": "max"}, {"target_modules": "("}, {"target_modules": []}, {"scaling": float("nan")}):
        with pytest.raises(ValueError):
            DeltaConfig(**bad)
    with pytest.raises(ValueError, match="matches no module"):
        DeltaInjector(Block(), DeltaConfig(target_modules=["gate_proj"]))
