"""Parameter translator: shapes, no passage-independent delta, save/load round trip, and
refusing the wrong model or rank."""

from __future__ import annotations

import json

import pytest
import torch

from hyco_rag.dyprag import (
    DEFAULT_TRANSLATOR_DIR,
    DeltaConfig,
    DeltaInjector,
    ParameterTranslator,
    TranslatorConfig,
    TranslatorMismatchError,
)

from .conftest import make_tiny_llama


@pytest.fixture(scope="module")
def translator(tiny_llama):
    model, _ = tiny_llama
    torch.manual_seed(1)
    translator = ParameterTranslator(TranslatorConfig.for_model(model, hidden_dim=8))
    with torch.no_grad():  # make the passage-dependent part visible in the outputs
        for head in list(translator.head_a.values()) + list(translator.head_b.values()):
            head.weight.normal_(std=0.1)
    return translator


def test_outputs_cover_every_target_with_lora_shapes(translator, tiny_llama):
    model, _ = tiny_llama
    shapes = DeltaInjector(model).target_shapes
    assert len(shapes) == 2 * 3  # 2 layers x gate/up/down
    factors = translator(torch.randn(3, 32))
    assert set(factors) == set(shapes)
    for name, (a, b) in factors.items():
        in_features, out_features = shapes[name]
        assert a.shape == (3, 2, in_features) and b.shape == (3, out_features, 2)
    deltas = translator.translate(torch.randn(2, 32))
    assert len(deltas) == 2 and deltas[0].rank == 2 and not deltas[0].factors[next(iter(shapes))][0].requires_grad
    # Different passages give different deltas; layers of one type get different deltas.
    a0 = deltas[0].factors["model.layers.0.mlp.up_proj"][0]
    assert not torch.allclose(a0, deltas[1].factors["model.layers.0.mlp.up_proj"][0])
    assert not torch.allclose(a0, deltas[0].factors["model.layers.1.mlp.up_proj"][0])


def test_save_load_round_trip(translator, tiny_llama, tmp_path):
    model, _ = tiny_llama
    translator.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["base_model"]["hidden_size"] == 32 and config["base_model"]["num_hidden_layers"] == 2
    assert config["base_model"]["targets"]["model.layers.1.mlp.down_proj"] == [64, 32]
    loaded = ParameterTranslator.from_pretrained(tmp_path, model=model)
    x = torch.randn(2, 32)
    for name, (a, b) in translator(x).items():  # stored as fp16, loaded as fp32
        la, lb = loaded(x)[name]
        assert la.dtype == torch.float32
        torch.testing.assert_close(la, a, rtol=2e-2, atol=2e-3)
        torch.testing.assert_close(lb, b, rtol=2e-2, atol=2e-3)


def test_no_static_delta_and_an_untrained_translator_changes_nothing(tiny_llama):
    model, _ = tiny_llama
    fresh = ParameterTranslator(TranslatorConfig.for_model(model, hidden_dim=8))
    assert not [k for k in fresh.state_dict() if "base_" in k]  # the old A0/B0 are gone
    for _, (a, b) in fresh(torch.randn(3, 32)).items():
        assert a.abs().sum() > 0 and torch.count_nonzero(b) == 0  # B starts at zero: zero deltas
    assert "model.layers.0.mlp.down_proj" in [fresh.names[i] for i in fresh.type_targets["down_proj"]]
    assert "down_proj" in fresh.head_direct and "up_proj" not in fresh.head_direct  # out == hidden only


def test_feature_statistics_and_the_average_passage(tiny_llama):
    model, _ = tiny_llama
    t = ParameterTranslator(TranslatorConfig.for_model(model, hidden_dim=8))
    feats = torch.randn(10, 32) * 3 + 5
    t.set_feature_statistics(feats)
    torch.testing.assert_close(t.mean_embedding()[0], feats.mean(0))
    torch.testing.assert_close(t.feature_std, feats.std(0))


def test_a_version_1_translator_is_refused_with_a_reason(translator, tmp_path):
    translator.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["version"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="static passage-independent delta"):
        ParameterTranslator.from_pretrained(tmp_path)


def test_another_model_is_refused(translator, tmp_path):
    translator.save_pretrained(tmp_path)
    wider, _ = make_tiny_llama(0, hidden=48)
    with pytest.raises(TranslatorMismatchError, match="hidden_size=32.*hidden_size=48"):
        ParameterTranslator.from_pretrained(tmp_path, model=wider)
    deeper, _ = make_tiny_llama(0, layers=3)
    with pytest.raises(TranslatorMismatchError, match="num_hidden_layers"):
        ParameterTranslator.from_pretrained(tmp_path, model=deeper)
    other_weights, _ = make_tiny_llama(seed=7)  # same shapes, other weights
    with pytest.raises(TranslatorMismatchError, match="weights differ"):
        ParameterTranslator.from_pretrained(tmp_path, model=other_weights)


def test_wrong_rank_is_refused(translator, tiny_llama, tmp_path):
    model, _ = tiny_llama
    translator.save_pretrained(tmp_path)
    with pytest.raises(TranslatorMismatchError, match="rank-2 deltas but rank 4"):
        ParameterTranslator.from_pretrained(tmp_path, model=model, delta_config=DeltaConfig(rank=4))
    config = json.loads((tmp_path / "config.json").read_text())
    config["rank"], config["delta"]["rank"] = 3, 3  # config says rank 3, weights are rank 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(TranslatorMismatchError, match="rank 3"):
        ParameterTranslator.from_pretrained(tmp_path)


def test_missing_translator_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="hyco-rag train prag"):
        ParameterTranslator.from_pretrained(tmp_path / "nothing")


def test_shipped_translator_fits_the_embedded_model(smollm2):
    model, _ = smollm2
    size = (DEFAULT_TRANSLATOR_DIR / "model.safetensors").stat().st_size
    assert size < 8 * 2**20, f"shipped translator is {size / 2**20:.1f} MiB"
    translator = ParameterTranslator.from_pretrained(model=model)  # the default: shipped weights
    assert translator.config.base_model["num_hidden_layers"] == 30
    deltas = translator.translate(torch.randn(1, 576))
    assert len(deltas[0].factors) == 90
    deltas[0].validate()
    report = json.loads((DEFAULT_TRANSLATOR_DIR / "training.json").read_text())
    assert "command" in report and (DEFAULT_TRANSLATOR_DIR / "training_passages.txt").is_file()
