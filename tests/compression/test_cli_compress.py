"""`hyco-rag compress`: the JSONL contract external checks rely on, and clear line errors."""

from __future__ import annotations

import json

from hyco_rag.cli import main

LINES = [
    {"query": "When was the Eiffel Tower built?", "documents": [
        "The Eiffel Tower in Paris was built from 1887 to 1889 for the World's Fair.",
        "The Louvre opened in 1793. It houses the Mona Lisa.",
        "",
    ]},
    {"id": "q2", "query": "How high is Everest?", "documents": ["Mount Everest is 8,849 metres high. It is in Nepal."]},
    {"query": "empty list", "documents": []},
]


def _write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def test_compress_cli_writes_one_line_per_input_in_order(tmp_path, capsys):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(source, LINES)
    code = main(["compress", "--input", str(source), "--output", str(target), "--rate", "0.5", "--no-progress",
                 "--batch-size", "2", "--device", "cpu"])
    assert code == 0
    out = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert len(out) == len(LINES)
    for record, line in zip(out, LINES):
        assert len(record["documents"]) == len(line["documents"])
        assert record["stats"]["compressed_tokens"] <= record["stats"]["original_tokens"] // 2 + 0
    assert out[1]["id"] == "q2"
    assert out[0]["documents"][2] == ""
    assert "1889" in out[0]["documents"][0]


def test_compress_cli_target_tokens_and_tokenizer(tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(source, LINES[:2])
    assert main(["compress", "--input", str(source), "--output", str(target), "--target-tokens", "10",
                 "--target-tokenizer", "smollm2", "--no-progress", "--device", "cpu"]) == 0
    out = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert all(r["stats"]["compressed_tokens"] <= 10 for r in out)
    assert out[0]["stats"]["tokenizer"] == "smollm2"


def test_bad_line_fails_naming_the_line_and_writes_nothing(tmp_path, capsys):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps(LINES[0]) + "\n" + '{"query": "x", "documents": ["a", 7]}\n', encoding="utf-8")
    assert main(["compress", "--input", str(source), "--output", str(target), "--no-progress"]) == 2
    assert "line 2" in capsys.readouterr().err and not target.exists()
    source.write_text(json.dumps(LINES[0]) + "\n\n{not json\n", encoding="utf-8")
    assert main(["compress", "--input", str(source), "--output", str(target), "--no-progress"]) == 2
    assert "line 2 is empty" in capsys.readouterr().err
    source.write_text('{"documents": []}\n', encoding="utf-8")
    assert main(["compress", "--input", str(source), "--output", str(target), "--no-progress"]) == 2
    assert "line 1: 'query' must be a string" in capsys.readouterr().err
    _write(source, LINES[:1])
    assert main(["compress", "--input", str(source), "--output", str(target), "--rate", "nan", "--no-progress"]) == 2
    assert "rate must be a finite number" in capsys.readouterr().err
    assert not target.exists()


def test_a_threshold_that_keeps_nothing_warns_and_zero_budgets_fail(tmp_path, caplog):
    import logging
    import warnings

    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(source, LINES[:2])
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["compress", "--input", str(source), "--output", str(target), "--threshold", "1.0",
                     "--no-progress", "--device", "cpu"]) == 0
    out = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert all("kept nothing" in r["stats"]["warning"] for r in out)
    assert "2 of 2 lines kept nothing" in caplog.text
    assert main(["compress", "--input", str(source), "--output", str(tmp_path / "x.jsonl"), "--target-tokens", "0",
                 "--no-progress"]) == 2
    assert not (tmp_path / "x.jsonl").exists()


def test_hops_reach_the_compressor_and_bad_hops_fail_before_loading(tmp_path, capsys):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(source, LINES[:1])
    assert main(["compress", "--input", str(source), "--output", str(target), "--rate", "0.5", "--hops", "2",
                 "--no-progress", "--device", "cpu"]) == 0
    stats = json.loads(target.read_text(encoding="utf-8"))["stats"]
    assert stats["hops"] == 2 and stats["evidence"][0]["hop"] == 1
    assert main(["compress", "--input", str(source), "--output", str(tmp_path / "x.jsonl"), "--hops", "0",
                 "--no-progress"]) == 2
    assert "hops must be in [1, 4]" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
