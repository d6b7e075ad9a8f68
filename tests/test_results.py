import json
import math
import os

import pytest

from hyco_rag.results import atomic_output, format_table, save_safetensors_atomic, write_json_atomic, write_results


def test_write_results_records_rows_config_and_environment(tmp_path):
    path = write_results("demo_bench", [{"method": "ours", "f1": 1.5, "nan": math.nan}], config={"n": 3}, results_dir=tmp_path)
    payload = json.loads(path.read_text())
    assert path.parent == tmp_path and path.name.startswith("demo_bench-")
    assert payload["rows"] == [{"method": "ours", "f1": 1.5, "nan": None}]
    assert payload["config"] == {"n": 3} and "torch" in payload["environment"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_output_replaces_on_success_only(tmp_path):
    target = tmp_path / "sub" / "weights.bin"
    with atomic_output(target) as temporary:
        assert temporary.parent == target.parent and temporary != target  # same folder: a rename, not a copy
        temporary.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # what the user's umask gives, not mkstemp's 0o600
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_output(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["weights.bin"]


def test_save_safetensors_atomic_round_trips_with_metadata(tmp_path):
    import torch
    from safetensors import safe_open

    path = save_safetensors_atomic({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "m.safetensors", {"format": "x"})
    with safe_open(str(path), framework="pt") as stored:
        assert stored.metadata() == {"format": "x"}
        assert torch.equal(stored.get_tensor("w"), torch.arange(6.0).reshape(2, 3))
    with pytest.raises(ValueError, match="non contiguous"):  # refused by safetensors; the old file stays
        save_safetensors_atomic({"w": torch.zeros(3, 2).t()}, path)
    with safe_open(str(path), framework="pt") as stored:
        assert stored.get_tensor("w").shape == (2, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_format_table_aligns_columns():
    table = format_table([{"a": 1.234, "b": "x"}, {"a": 10.0, "b": None}])
    lines = table.splitlines()
    assert lines[0].split() == ["a", "b"] and "1.23" in lines[2] and len({len(line.rstrip()) > 0 for line in lines}) == 1
