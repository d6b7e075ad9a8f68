"""Smoke test of ``benchmarks/compressor_throughput.py``: its ``main`` end to end on 2 questions."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compressor_throughput.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("compressor_throughput_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_throughput_rows_and_ratios(shared_data, tmp_path, capsys):
    script = _load_script()
    threads = torch.get_num_threads()
    argv = ["--questions", "2", "--threads", "1", "--rates", "0.5", "--repeats", "1", "--device", "cpu", "--results-dir", str(tmp_path)]
    assert script.main(argv) == 0
    assert torch.get_num_threads() == threads  # the caller's thread count is restored

    [path] = tmp_path.glob("compressor_throughput-*.json")
    rows = json.loads(path.read_text())["rows"]
    methods = [row["method"] for row in rows]
    assert methods == ["raw MiniLM forward", "HyCo per request", "HyCo batched"]
    raw = rows[0]["tokens/s"]
    for row in rows:
        assert row["tokens/s"] > 0 and row["context tokens"] > 500  # 2 questions x 10 passages
        assert abs(row["x raw forward"] - row["tokens/s"] / raw) < 0.02
    assert "HyCo batched" in capsys.readouterr().out
