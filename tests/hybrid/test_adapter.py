"""The hybrid adapter on its own: shapes, what conditions it, padding, persistence, identity."""

from __future__ import annotations

import pytest
import torch

from hyco_rag.hybrid import AdapterMismatchError, HybridAdapter, HybridConfig
from hyco_rag.hybrid.adapter import group_assignment

from ..engine.conftest import make_talkative_llama


@pytest.fixture(scope="module")
def tiny():
    return make_talkative_llama()


def _adapter(model, seed: int = 0, **sizes) -> HybridAdapter:
    torch.manual_seed(seed)
    adapter = HybridAdapter.for_model(model, width=32, heads=4, **sizes).eval()
    with torch.no_grad():  # the gate starts at zero; give it something to say
        adapter.gate.weight.normal_(0, 0.5)
    return adapter


def _states(batch: int, length: int, hidden: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, hidden, generator=torch.Generator().manual_seed(seed))


def test_soft_tokens_have_the_embedding_norm_and_the_configured_count(tiny):
    model, _ = tiny
    adapter = _adapter(model, num_soft_tokens=6)
    context, instruction = _states(2, 20), _states(2, 5, seed=2)
    soft, gate = adapter(context, torch.ones(2, 20), instruction, torch.ones(2, 5), return_gate=True)
    assert soft.shape == (2, 6, 64) and gate.shape == (2, 6, 2)
    norm = model.get_input_embeddings().weight.norm(dim=-1).mean()
    assert torch.allclose(soft.norm(dim=-1), norm.expand(2, 6), rtol=1e-4)
    assert torch.allclose(gate.sum(-1), torch.ones(2, 6)) and bool((gate > 0).all())
    assert 100_000 < HybridAdapter.for_model(model).num_parameters < 3_000_000  # default sizes, tiny hidden


def test_the_instruction_and_the_context_both_change_the_soft_tokens(tiny):
    adapter = _adapter(tiny[0])
    context, mask = _states(1, 30), torch.ones(1, 30)
    base = adapter(context, mask, _states(1, 4, seed=2), torch.ones(1, 4))
    other_question = adapter(context, mask, _states(1, 4, seed=3), torch.ones(1, 4))
    other_context = adapter(_states(1, 30, seed=9), mask, _states(1, 4, seed=2), torch.ones(1, 4))
    assert not torch.allclose(base, other_question, atol=1e-4)
    assert not torch.allclose(base, other_context, atol=1e-4)


def test_padding_changes_nothing(tiny):
    adapter = _adapter(tiny[0])
    context, instruction = _states(1, 17), _states(1, 5, seed=2)
    alone = adapter(context, torch.ones(1, 17), instruction, torch.ones(1, 5))
    padded_context = torch.cat([context, torch.randn(1, 9, 64)], dim=1)
    padded_instruction = torch.cat([instruction, torch.randn(1, 3, 64)], dim=1)
    mask_c = torch.cat([torch.ones(1, 17), torch.zeros(1, 9)], dim=1)
    mask_i = torch.cat([torch.ones(1, 5), torch.zeros(1, 3)], dim=1)
    padded = adapter(padded_context, mask_c, padded_instruction, mask_i)
    assert torch.allclose(alone, padded, atol=1e-5)


def test_a_context_shorter_than_the_soft_tokens_gives_no_nan(tiny):
    adapter = _adapter(tiny[0], num_soft_tokens=8)
    soft = adapter(_states(1, 3), torch.ones(1, 3), _states(1, 2), torch.ones(1, 2))
    assert bool(torch.isfinite(soft).all())


def test_groups_split_each_row_into_consecutive_stretches():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]])
    groups = group_assignment(mask, 3).argmax(-1)
    assert groups[0, :6].tolist() == [0, 0, 1, 1, 2, 2]
    assert groups[1, :3].tolist() == [0, 1, 2]
    assert group_assignment(mask, 3)[0, 6:].sum() == 0  # padding belongs to no group


def test_a_forced_branch_is_that_branch_alone(tiny):
    adapter = _adapter(tiny[0])
    args = (_states(1, 12), torch.ones(1, 12), _states(1, 4, seed=2), torch.ones(1, 4))
    fused, mlp, qformer = adapter(*args), adapter(*args, branch="mlp"), adapter(*args, branch="qformer")
    assert not torch.allclose(mlp, qformer, atol=1e-4) and not torch.allclose(fused, mlp, atol=1e-4)
    with pytest.raises(ValueError, match="branch must be one of mlp, qformer"):
        adapter(*args, branch="both")


def test_bad_inputs_are_refused_naming_the_problem(tiny):
    adapter = _adapter(tiny[0])
    with pytest.raises(ValueError, match="hidden size 64"):
        adapter(torch.randn(1, 4, 32), torch.ones(1, 4), torch.randn(1, 2, 64), torch.ones(1, 2))
    with pytest.raises(ValueError, match="at least one context token"):
        adapter(torch.randn(1, 4, 64), torch.zeros(1, 4), torch.randn(1, 2, 64), torch.ones(1, 2))
    with pytest.raises(ValueError, match="multiple of heads"):
        HybridConfig(hidden_size=64, width=30, heads=4)


def test_saved_and_loaded_gives_the_same_soft_tokens(tiny, tmp_path):
    model, _ = tiny
    adapter = _adapter(model)
    adapter.save_pretrained(tmp_path, dtype=torch.float32)
    loaded = HybridAdapter.from_pretrained(tmp_path, model=model)
    args = (_states(1, 12), torch.ones(1, 12), _states(1, 4, seed=2), torch.ones(1, 4))
    assert torch.equal(adapter(*args), loaded(*args))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp file left


def test_another_model_or_broken_files_are_refused(tiny, tmp_path):
    model, _ = tiny
    _adapter(model).save_pretrained(tmp_path)
    other, _ = make_talkative_llama(seed=11)
    with pytest.raises(AdapterMismatchError, match="another model"):
        HybridAdapter.from_pretrained(tmp_path, model=other)
    with pytest.raises(FileNotFoundError, match="train one with `hyco-rag train hybrid`"):
        HybridAdapter.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text('{"hidden_size": 64, "colour": "red"}')
    with pytest.raises(AdapterMismatchError, match="not a hybrid adapter config"):
        HybridAdapter.from_pretrained(tmp_path)
