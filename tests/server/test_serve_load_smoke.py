"""Smoke test of ``benchmarks/serve_load.py --quick`` on the tiny engine: every section runs,
the JSON has the rows, no cross-talk, nothing lost under overload, the delta cache hits."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("serve_load_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_on_the_tiny_engine(engine, tmp_path, capsys):
    script = _load_script()
    threads = torch.get_num_threads()
    out = tmp_path / "serve_load.json"
    assert script.main(["--quick", "--requests", "3", "--out", str(out)], engine=engine) == 0
    assert torch.get_num_threads() == threads
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    assert [(r["shape"], r["mode"], r["concurrency"]) for r in rows] == [
        (shape, mode, level) for mode in ("combine", "rag") for shape in ("decode", "rag") for level in (1, 4)
    ]
    for row in rows:
        assert row["ok"] == row["requests"] == 3 and row["completion_tokens"] > 0 and row["tokens/s"] > 0
        assert row["p50_s"] <= row["p99_s"] and row["mean_batch"] > 0.5
        assert row["mismatches"] == 0 and row["checked"] == (0 if row["concurrency"] == 1 else 3)  # vs one at a time
        assert row["cpu_seconds"] > 0 and row["cpu_ratio"] > 0
        assert (
            abs(
                row["ratio"]
                - row["tokens/s"]
                / next(r["tokens/s"] for r in rows if (r["shape"], r["mode"], r["concurrency"]) == (row["shape"], row["mode"], 1))
            )
            < 1e-9
        )
    assert any(r["mean_batch"] > 1 for r in rows if r["concurrency"] == 4)
    cache = payload["delta_cache"]
    assert cache["hit_rate_metrics"] == 0.5 and cache["same_answers"] and cache["translate_repeat_s"] < cache["translate_first_s"]
    overload = payload["overload"]
    assert overload["lost"] == 0 and overload["sent"] == 12 and set(overload["statuses"]) <= {"200", "429", "503"}
    assert "429" in overload["statuses"]
    assert payload["environment"]["load_average_before"] is not None
    assert "tokens/s" in capsys.readouterr().out


def test_the_8b_shape_builder_on_a_small_shape():
    script = _load_script()
    shape = {
        **script.LLAMA_8B_SHAPE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    model, tokenizer = script.random_llama(shape, "cpu", torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16 and torch.get_default_dtype() == torch.float32
    assert model.config.vocab_size == len(tokenizer) and model.config.intermediate_size == 128
