"""The LongLLMLingua peer client: request keys, clear errors, and a live run when the venv exists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hyco_rag.evaluation.llmlingua import RUNNER, LLMLinguaPeer, LLMLinguaPeerConfig, peers_dir

ROOT = Path(__file__).resolve().parents[2]


def test_keys_depend_on_every_input():
    key = LLMLinguaPeer.key("q", ["a", "b"], 10)
    assert key == LLMLinguaPeer.key("q", ("a", "b"), 10)
    assert len({key, LLMLinguaPeer.key("q2", ["a", "b"], 10), LLMLinguaPeer.key("q", ["a"], 10),
                LLMLinguaPeer.key("q", ["a", "b"], 11)}) == 4


def test_missing_venv_gives_a_clear_error(tmp_path):
    peer = LLMLinguaPeer(LLMLinguaPeerConfig(python=str(tmp_path / "nope" / "python"), model=str(tmp_path)))
    reason = peer.unavailable_reason()
    assert reason and "setup_llmlingua.sh" in reason
    with pytest.raises(RuntimeError, match="LongLLMLingua peer unavailable"):
        peer.compress_many([("q", ["doc"], 5)])
    with pytest.raises(ValueError, match="threads"):
        LLMLinguaPeerConfig(threads=0)


def test_peers_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HYCO_RAG_PEERS", str(tmp_path))
    assert peers_dir() == tmp_path
    assert LLMLinguaPeerConfig().python_path == tmp_path / "llmlingua-venv" / "bin" / "python"


def test_prepare_smollm2_folder_edits(tmp_path):
    """The three transformers-4.44 edits, on a miniature folder of the same shape."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"weights")
    (source / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend", "backend": "tokenizers"}))
    (source / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "merges": [["a", "b"], "c d"], "ignore_merges": False}}))
    (source / "config.json").write_text(json.dumps({"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}))
    (source / "chat_template.jinja").write_text("{{ messages }}")
    target = tmp_path / "out"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "peers" / "prepare_smollm2_tf4.py"), str(source), str(target)], check=True)
    assert json.loads((target / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2TokenizerFast"
    assert json.loads((target / "tokenizer_config.json").read_text())["chat_template"] == "{{ messages }}"
    model = json.loads((target / "tokenizer.json").read_text())["model"]
    assert model["merges"] == ["a b", "c d"] and "ignore_merges" not in model
    assert json.loads((target / "config.json").read_text())["rope_theta"] == 100000.0
    assert (target / ".hyco_peer_ok").is_file() and (target / "model.safetensors").read_bytes() == b"weights"


def test_live_peer_compresses_within_budget(tmp_path):
    peer = LLMLinguaPeer(LLMLinguaPeerConfig(threads=1, cache_path=str(tmp_path / "out.jsonl")))
    reason = peer.unavailable_reason()
    if reason:
        pytest.skip(f"LongLLMLingua peer not set up: {reason}")
    assert RUNNER.is_file()
    documents = [
        "The Eiffel Tower is in Paris. It was completed in 1889 and is 330 metres tall.",
        "Photosynthesis converts light into chemical energy in plants and algae.",
        "Mount Everest is the highest mountain on Earth, on the border of Nepal and China.",
    ]
    [output] = peer.compress_many([("When was the Eiffel Tower completed?", documents, 20)])
    assert output.documents and all(isinstance(d, str) for d in output.documents)
    assert output.compressed_tokens < 60 and output.seconds > 0
    [again] = peer.compress_many([("When was the Eiffel Tower completed?", documents, 20)])  # from the cache
    assert again.documents == output.documents
