import json
import math

import pytest

from hyco_rag.results import format_table, write_json_atomic, write_results


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


def test_format_table_aligns_columns():
    table = format_table([{"a": 1.234, "b": "x"}, {"a": 10.0, "b": None}])
    lines = table.splitlines()
    assert lines[0].split() == ["a", "b"] and "1.23" in lines[2] and len({len(line.rstrip()) > 0 for line in lines}) == 1
