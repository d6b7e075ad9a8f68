"""The compressor's low-rank deltas use DyPRAG's matching and delta maths (one LoRA implementation)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from hyco_rag.compression import CompressorConfig
from hyco_rag.compression.model import HyCoScorer


def _scorer(**overrides) -> HyCoScorer:
    torch.manual_seed(0)
    backbone = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                    intermediate_size=64))
    config = CompressorConfig(exit_layer=2, head_hidden=16, lora_rank=2, attention="full", **overrides)
    return HyCoScorer(config, backbone).eval()  # no dropout: outputs compare exactly


def test_targets_come_from_the_dyprag_matcher_above_the_exit_layer():
    from hyco_rag.dyprag.injection import find_target_modules, layer_index

    scorer = _scorer()
    expected = {name for name in find_target_modules(scorer.backbone, scorer._lora_config()) if layer_index(name) >= 2}
    assert set(scorer._deltas) == expected and expected
    keys = [k for k in scorer.trainable_state_dict() if ".lora_" in k]
    # Saved key layout unchanged from the previous LoRALinear: backbone.<module>.lora_a / lora_b.
    assert "backbone.encoder.layer.2.attention.self.query.lora_a" in keys
    assert all(".layer.0." not in k and ".layer.1." not in k for k in keys)
    assert len(keys) == 2 * len(expected)


def test_hooked_delta_equals_the_merged_weights_and_trains():
    scorer = _scorer()
    for module, _ in scorer._deltas.values():
        torch.nn.init.normal_(module.lora_b, std=0.05)
    ids = torch.randint(5, 100, (2, 12))
    types = torch.zeros_like(ids)
    mask = torch.ones_like(ids)
    hidden = scorer.lower(ids, types, mask)
    out = scorer.upper(hidden, mask)
    out.sum().backward()
    grads = [module.lora_a.grad for module, _ in scorer._deltas.values()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        before = scorer.upper(hidden, mask)
        scorer.merge_lora()
        merged = scorer.upper(hidden, mask)
        scorer.merge_lora()  # idempotent
        again = scorer.upper(hidden, mask)
    assert torch.allclose(before, merged, atol=1e-5) and torch.equal(merged, again)


def test_untrained_deltas_leave_the_backbone_unchanged_and_bad_targets_fail():
    scorer = _scorer()
    ids = torch.randint(5, 100, (1, 8))
    with torch.no_grad():
        hooked = scorer.backbone(input_ids=ids).last_hidden_state
        for _, hook in scorer._deltas.values():
            hook.merged = True  # bypass the (zero) delta
        bare = scorer.backbone(input_ids=ids).last_hidden_state
    assert torch.allclose(hooked, bare, atol=1e-6)
    with pytest.raises(ValueError, match="lora_targets"):
        _scorer(lora_targets=("no_such_module",))
