"""Smoke test of ``benchmarks/parametric_qa.py``: option checks, the GPU section's code path on
CPU, and ``main`` end to end in ``--quick`` mode on a tiny random Llama (seconds, not minutes).

The figures of a real run are in docs/parametric_benchmark.md; this only checks the plumbing:
every section and mode appears with the documented columns, the controls are paired with
bootstrap intervals, the leak check runs, and a rerun resumes from the partial results.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "parametric_qa.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("parametric_qa_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model_and_translator(tmp_path_factory):
    """A tiny random Llama saved as a model folder, and a translator for it (large random heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig
    from hyco_rag.models import load_tokenizer

    tokenizer = load_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model_dir = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    translator = ParameterTranslator(TranslatorConfig.for_model(model, hidden_dim=8))
    with torch.no_grad():
        for head in list(translator.head_a.values()) + list(translator.head_b.values()):
            head.weight.normal_(std=0.3)
    translator_dir = tmp_path_factory.mktemp("translator")
    translator.save_pretrained(translator_dir)
    (translator_dir / "training_passages.txt").write_text("0" * 40 + "\n")
    return model_dir, translator_dir


def test_cli_reports_bad_options_as_usage_errors(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--squad-modes", "none,telepathy"])
    assert exit_info.value.code == 2 and "telepathy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--top3-rules", "max"])
    with pytest.raises(SystemExit):
        script.parse_args(["--cards", "-1"])


def test_gpu_section_logic_on_cpu():
    """The GPU section's code path, on CPU with toy shapes (this machine may have no GPU)."""
    from hyco_rag.evaluation.parametric import run_gpu_section

    tiny = dict(hidden=32, intermediate=64, translator_layers=4, heads=4, kv_heads=2, vocab=64, batch=2,
                prefill_tokens=8, decode_tokens=2, passage_counts=(1, 3), dtype=torch.float32)
    rows, status = run_gpu_section(True, device="cpu", model_layers=1, quick=True, **tiny)
    assert status == {"run": True, "device": "cpu", "model_layers": 1}
    translate = [r for r in rows if r["measure"].startswith("translate")]
    assert [r["ms_per_passage"] > 0 for r in translate] == [True, True]
    assert translate[1]["ms_per_passage"] == pytest.approx(translate[1]["ms"] / 3)
    forward = [r for r in rows if "ms_hooked" in r]
    assert len(forward) == 2 and all(r["ms"] > 0 and r["ms_hooked"] > 0 for r in forward)
    assert run_gpu_section(False) == ([], {"run": False, "reason": "--no-gpu"})
    if not torch.cuda.is_available():
        assert run_gpu_section(True) == ([], {"run": False, "reason": "CUDA is not available on this machine"})


def test_main_end_to_end(script, shared_data, tiny_model_and_translator, tmp_path, capsys):
    model_dir, translator_dir = tiny_model_and_translator
    argv = ["--quick", "--model", str(model_dir), "--translator", str(translator_dir), "--work", str(tmp_path / "work"),
            "--results-dir", str(tmp_path / "results"), "--no-gpu", "--no-progress"]
    assert script.main(argv) == 0
    [path] = sorted((tmp_path / "results").glob("parametric_qa-*Z.json"))
    payload = json.loads(path.read_text())
    rows = payload["rows"]
    seen = {(r["section"], r["setting"], r["mode"]) for r in rows}
    for mode in script.SYNTHETIC_MODES + ("prag", "prag_shuffled"):
        assert ("synthetic", "cards", mode) in seen
    for mode in script.SQUAD_MODES:
        assert ("squad", "gold", mode) in seen
    assert {r.get("combine_rule") for r in rows if r["setting"] == "top3"} == {"mean", "sum", "concat"}
    assert [r["combine_rule"] for r in rows if r["setting"] == "top3" and r["mode"] == "dyprag_shuffled"] == ["sum"]
    for row in rows:
        assert {"section", "setting", "mode", "n", "em", "f1", "contains"} <= set(row)
        if row["section"] == "synthetic":
            assert row["mc_accuracy"] is not None
    assert [r["prompt"] for r in rows if r["setting"] == "gold" and r["mode"] == "rag"] == ["plain", "short"]
    prag = [r for r in rows if r["mode"] == "prag"][0]
    assert prag["prag_bytes_per_passage"] > 0 and prag["prag_train_s_per_passage"] > 0
    pairs = {(d["a"], d["b"], d["metric"]) for d in payload["config"]["differences"]}
    assert ("dyprag", "dyprag_shuffled", "mc") in pairs and ("combine", "combine_shuffled", "f1") in pairs
    assert ("prag", "prag_shuffled", "mc") in pairs
    assert payload["config"]["gpu_section"] == {"run": False, "reason": "--no-gpu"}
    assert any("leak check passed" in n for n in payload["config"]["notes"])
    assert path.with_suffix(".md").is_file()
    # A rerun resumes: every section comes from the partial file (no "running" log line).
    capsys.readouterr()
    assert script.main(argv) == 0
    assert len(sorted((tmp_path / "results").glob("parametric_qa-*Z.json"))) >= 1
