"""``POST /v1/compress``: the compressor alone, with the ``hyco-rag compress`` CLI's contract
(per-line input -> ``{"documents", "stats"}``, one entry per input document, ``""`` where a
passage was dropped, ``id`` echoed)."""

from __future__ import annotations

import httpx
import pytest

from hyco_rag.server import BackgroundServer, create_app

from .conftest import PASSAGES, FakeCompressor


@pytest.fixture(scope="module")
def hyco_compressor():
    from hyco_rag.compression.testing import build_test_compressor

    return build_test_compressor(device="cpu")


def test_same_output_as_the_cli(engine, hyco_compressor, tmp_path, monkeypatch):
    import argparse
    import json

    from hyco_rag.cli import compress as cli

    query = "Which river reaches the Mediterranean?"
    documents = PASSAGES[:3]
    with BackgroundServer(create_app(engine, compressor=hyco_compressor)) as running:
        response = httpx.post(
            running.base_url + "/v1/compress", json={"id": "q1", "query": query, "documents": documents, "rate": 0.5}, timeout=60
        )
        assert response.status_code == 200, response.text
        served = response.json()
        by_question = httpx.post(
            running.base_url + "/v1/compress",
            json={"question": query, "documents": [{"text": d} for d in documents], "target_tokens": 12},
            timeout=60,
        ).json()
        refused = httpx.post(
            running.base_url + "/v1/compress",
            json={"query": query, "documents": documents, "rate": 0.5, "target_tokens": 3},
            timeout=60,
        )
        chained = httpx.post(
            running.base_url + "/v1/compress", json={"query": query, "documents": documents, "rate": 0.5, "hops": 2}, timeout=60
        )
        bad_hops = httpx.post(
            running.base_url + "/v1/compress", json={"query": query, "documents": documents, "hops": 9}, timeout=60
        )
    assert set(served) == {"id", "documents", "stats"} and served["id"] == "q1"
    assert len(served["documents"]) == 3 and served["stats"]["compressed_tokens"] < served["stats"]["original_tokens"]
    assert by_question["stats"]["compressed_tokens"] <= 12 and "id" not in by_question
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "rate"
    assert chained.status_code == 200 and [e["hop"] for e in chained.json()["stats"]["evidence"]] == [1, 2]
    assert bad_hops.status_code == 400 and "hops" in bad_hops.json()["error"]["message"]

    # the CLI on the same line (with the same compressor) writes the same documents and stats
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"id": "q1", "query": query, "documents": documents}) + "\n")
    args = argparse.Namespace(
        input=str(source),
        output=str(target),
        rate=0.5,
        target_tokens=None,
        threshold=None,
        target_tokenizer=None,
        min_tokens_per_passage=0,
        hops=1,
        batch_size=8,
        model=None,
        device="cpu",
        threads=None,
        no_progress=True,
    )
    from hyco_rag.compression import HyCoCompressor

    monkeypatch.setattr(HyCoCompressor, "from_pretrained", classmethod(lambda cls, *a, **k: hyco_compressor))
    assert cli.run(args) == 0
    line = json.loads(target.read_text())
    assert line["documents"] == served["documents"]
    assert {k: v for k, v in line["stats"].items() if k != "seconds"} == {
        k: v for k, v in served["stats"].items() if k != "seconds"
    }


def test_any_compressor_and_bad_input(engine):
    fake = FakeCompressor()
    with (
        BackgroundServer(create_app(engine, compressor=fake)) as running,
        httpx.Client(base_url=running.base_url, timeout=30) as http,
    ):
        out = http.post("/v1/compress", json={"query": "q", "documents": ["one two three four", "five six"]}).json()
        assert out["documents"] == ["one two", "five"] and out["stats"]["compressed_tokens"] == 3
        assert http.post("/v1/compress", json={"query": "q", "documents": ["a b"], "target_tokens": 5}).status_code == 200
        assert fake.calls[-1][2] == {"target_tokens": 5}
        assert http.post("/v1/compress", json={"documents": ["x"]}).status_code == 400  # no query
        assert http.post("/v1/compress", json={"query": "q", "question": "q", "documents": ["x"]}).status_code == 400
        assert http.post("/v1/compress", json={"query": "q", "documents": "x"}).status_code == 422
        assert http.get("/v1/compress").status_code == 405
