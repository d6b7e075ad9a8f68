"""``hyco-rag compress --ray``: Ray Data over compressor actors writes the plain CLI's output
byte for byte, resumes a stopped run from its finished blocks, and reads Parquet too."""

from __future__ import annotations

import json
import logging

import pytest

from hyco_rag.cli import main

DOCUMENTS = [
    "The Eiffel Tower in Paris was built from 1887 to 1889 for the World's Fair.",
    "The Louvre opened in 1793. It houses the Mona Lisa.",
    "Mount Everest is 8,849 metres high. It is in Nepal.",
    "",
    "Marie Curie won Nobel Prizes in physics (1903) and chemistry (1911).",
]


def _lines(count: int) -> list[dict]:
    lines = []
    for i in range(count):
        record = {
            "query": f"Question {i}: when and where?",
            "documents": [DOCUMENTS[(i + j) % len(DOCUMENTS)] for j in range(1 + i % 3)],
        }
        if i % 4 == 1:
            record = {"id": f"q{i}", **record}
        if i == 5:
            record["documents"] = []
        lines.append(record)
    return lines


COMMON = ["--rate", "0.5", "--batch-size", "2", "--device", "cpu", "--threads", "1", "--no-progress", "--no-timings"]
RAY = ["--ray", "--block-lines", "4", "--actors", "1", "--actor-cpus", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    source = folder / "in.jsonl"
    source.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in _lines(10)), encoding="utf-8")
    plain = folder / "plain.jsonl"
    assert main(["compress", "--input", str(source), "--output", str(plain), *COMMON]) == 0
    return source, plain.read_bytes()


def test_ray_output_is_byte_identical_and_a_rerun_resumes(local_ray, corpus, tmp_path, caplog):
    source, plain = corpus
    target = tmp_path / "ray.jsonl"
    work = tmp_path / "ray.jsonl.blocks"
    # a run stopped after one block: no output yet, the finished block kept
    with caplog.at_level(logging.INFO):
        assert main(["compress", "--input", str(source), "--output", str(target), *COMMON, *RAY, "--max-blocks", "1"]) == 3
    assert not target.exists() and sorted(p.name for p in work.glob("block-*.jsonl")) == ["block-000000.jsonl"]
    first_block = (work / "block-000000.jsonl").read_bytes()
    assert plain.startswith(first_block) and first_block.count(b"\n") == 4
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["compress", "--input", str(source), "--output", str(target), *COMMON, *RAY]) == 0
    assert "resuming: 1 of 3 blocks already done" in caplog.text
    assert "compressing 2 block(s)" in caplog.text  # the finished block was not redone
    assert target.read_bytes() == plain
    assert not work.exists()
    # with timings, only stats.seconds (wall time) differs, as between two plain runs
    timed = tmp_path / "timed.jsonl"
    assert main(["compress", "--input", str(source), "--output", str(timed), *COMMON[:-1], *RAY]) == 0
    lines = [json.loads(line) for line in timed.read_text(encoding="utf-8").splitlines()]
    assert all(isinstance(line["stats"].pop("seconds"), float) for line in lines)
    assert "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode() == plain


def test_changed_options_start_over_and_parquet_reads_the_same(local_ray, corpus, tmp_path, caplog):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow (a Ray Data dependency) reads Parquet")
    import pyarrow as pa

    source, plain = corpus
    records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    parquet = tmp_path / "in.parquet"
    pq.write_table(
        pa.table(
            {
                "query": [r["query"] for r in records],
                "documents": [r["documents"] for r in records],
                "id": [r.get("id") for r in records],
            }
        ),
        parquet,
    )
    target = tmp_path / "out.jsonl"
    work = tmp_path / "work"
    # blocks of another run (other options) are not mixed in
    assert (
        main(
            [
                "compress",
                "--input",
                str(parquet),
                "--output",
                str(target),
                *COMMON[2:],
                "--rate",
                "0.25",
                *RAY,
                "--work-dir",
                str(work),
                "--max-blocks",
                "1",
            ]
        )
        == 3
    )
    with caplog.at_level(logging.WARNING):
        assert main(["compress", "--input", str(parquet), "--output", str(target), *COMMON, *RAY, "--work-dir", str(work)]) == 0
    assert "starting over" in caplog.text
    assert target.read_bytes() == plain


def test_bad_input_and_options_fail_before_any_work(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"query": "q", "documents": ["a", 7]}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["compress", "--input", str(source), "--output", str(out), "--ray", "--no-progress"]) == 2
    assert "line 1: documents[1] must be a string" in capsys.readouterr().err
    assert main(["compress", "--input", str(source), "--output", str(out), "--ray", "--actors", "0"]) == 2
    assert "--actors must be >= 1" in capsys.readouterr().err
    assert not out.exists()
