"""`hyco-rag demo`: modes side by side through one engine, the cached index, clear errors.

One end-to-end run uses the embedded models exactly as a user's ``hyco-rag demo`` does; the
others serve a tiny random Llama (fast) through the same code, with the embedded MiniLM index.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from hyco_rag.cli import main
from hyco_rag.demo import DemoConfig, default_threads, parse_modes, run_demo
from hyco_rag.engine import MODE_NAMES, Mode
from hyco_rag.retrieval import DenseIndex, index_cache_path

from ..engine.conftest import make_talkative_llama, random_translator


@pytest.fixture(scope="module")
def demo_index():
    """The demo corpus indexed as ``hyco-rag demo`` indexes it (same encoder, same disk cache entry,
    so a machine embeds the 346 passages once for these tests and the CLI together)."""
    from hyco_rag.data import load_demo_corpus

    index = DenseIndex.from_pretrained(device="cpu")
    index.add(load_demo_corpus(), cache=True)
    return index


@pytest.fixture(scope="module")
def tiny_engine():
    from hyco_rag.engine import Engine
    from hyco_rag.prompts import SHORT_ANSWER_TEMPLATE

    model, tokenizer = make_talkative_llama()
    engine = Engine(model, tokenizer, random_translator(model, scale=0.05), template=SHORT_ANSWER_TEMPLATE)
    yield engine
    engine.close()


def _serve_tiny(monkeypatch, demo_index):
    """Make the CLI's loaders return the tiny Llama and the session index (the code path is unchanged)."""
    import hyco_rag.demo as demo
    import hyco_rag.models

    monkeypatch.setattr(hyco_rag.models, "load_causal_lm", lambda name=None, device=None: make_talkative_llama())
    monkeypatch.setattr(demo, "build_index", lambda config, report=None: (demo_index, {"index": 0.0}))


def test_demo_end_to_end_with_the_embedded_models(capsys, tmp_path):
    """The real thing on 2 questions: MiniLM retrieval, SmolLM2, HyCo; one table; JSON answers."""
    path = tmp_path / "answers.json"
    code = main(
        ["demo", "--questions", "2", "-k", "1", "--modes", "rag,hyco", "--max-new-tokens", "8", "--quiet", "--json", str(path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    data = json.loads(path.read_text())
    assert data["modes"] == ["rag", "hyco"] and len(data["questions"]) == 2
    for item in data["questions"]:
        assert item["question"][:30] in out
        rag, hyco = item["answers"]["rag"], item["answers"]["hyco"]
        assert rag["context_tokens"] > 50  # a real passage went into the prompt
        assert 0 < hyco["context_tokens"] < rag["context_tokens"]  # HyCo kept a share of it
        assert rag["seconds"] > 0 and 0 <= rag["f1"] <= 1
        for answer in (rag, hyco):
            if answer["answer"]:
                assert answer["answer"][:20] in out.replace("\n", " ") or answer["answer"].split()[0] in out
    summary = {s["mode"]: s for s in data["summary"]}
    assert summary["hyco"]["saved_vs_rag"] == summary["rag"]["context_tokens"] - summary["hyco"]["context_tokens"] > 0
    assert "summary" in out and "saved vs rag" in out and f"{summary['rag']['mean_f1']:.2f}" in out
    assert data["threads"] == torch.get_num_threads() == default_threads()
    # No transformers / tqdm progress output went to stdout.
    assert "Loading" not in out and "it/s" not in out


def test_modes_side_by_side_in_one_table(tiny_engine, demo_index):
    """rag, hyco and combine for each question through one engine; the table shows every number."""
    from rich.console import Console

    from hyco_rag.cli.demo import print_run

    before = tiny_engine.stats.snapshot()
    config = DemoConfig(modes="rag,hyco,combine", questions=2, k=2, max_new_tokens=6)
    result = run_demo(config, engine=tiny_engine, index=demo_index)
    assert result.modes == ["rag", "hyco", "combine"] and not result.unavailable
    assert len(result.results) == 2
    for item in result.results:
        rag, hyco, combine = (item.answers[m] for m in ("rag", "hyco", "combine"))
        assert combine.context_tokens == rag.context_tokens == rag.passage_tokens > 0
        assert 0 < hyco.context_tokens < rag.context_tokens
        assert all(a.seconds > 0 and a.completion_tokens >= 0 for a in (rag, hyco, combine))
    after = tiny_engine.stats.snapshot()
    assert after != before  # the engine did the work (its stats moved)
    console = Console(record=True, width=200)
    print_run(result, console)
    text = console.export_text()
    for mode in ("rag", "hyco", "combine"):
        assert mode in text
    for item in result.results:
        assert item.question[:25] in text
        for answer in item.answers.values():
            assert f"F1 {answer.f1:.2f} · {answer.context_tokens} tok · {answer.seconds:.1f} s" in text
    summary = {s.mode: s for s in result.summary()}
    assert summary["combine"].saved_vs_rag == 0 and summary["hyco"].saved_vs_rag > 0
    assert f"mean F1 {summary['hyco'].mean_f1:.2f}" in text and f"{summary['rag'].context_tokens} context tok total" in text
    assert "saved vs rag" in text
    json.dumps(result.to_dict())  # plain data

    # --sequential decodes each mode alone: the same greedy answers as the batched run.
    alone = run_demo(
        DemoConfig(modes="rag,hyco,combine", questions=2, k=2, max_new_tokens=6, sequential=True),
        engine=tiny_engine,
        index=demo_index,
    )
    assert [{m: a.answer for m, a in r.answers.items()} for r in alone.results] == [
        {m: a.answer for m, a in r.answers.items()} for r in result.results
    ]
    console = Console(record=True, width=200)
    print_run(alone, console)
    assert "--sequential" not in console.export_text() and "--sequential" in text


def test_a_broken_translator_leaves_the_context_modes(monkeypatch, capsys, demo_index, tmp_path):
    """A translator that fails to load (e.g. an old format version) disables combine, says why, and rag still runs."""
    from hyco_rag.dyprag.translator import ParameterTranslator

    def broken(*args, **kwargs):
        raise ValueError("translator format version 1 is not supported; retrain it")

    monkeypatch.setattr(ParameterTranslator, "from_pretrained", broken)
    _serve_tiny(monkeypatch, demo_index)
    path = tmp_path / "out.json"
    code = main(
        ["demo", "--questions", "1", "-k", "1", "--modes", "rag,combine", "--max-new-tokens", "4", "--quiet", "--json", str(path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "combine: unavailable" in out and "format version 1 is not supported" in out.replace("\n", " ")
    data = json.loads(path.read_text())
    assert data["modes"] == ["rag"] and "format version 1" in data["unavailable"]["combine"]
    assert set(data["questions"][0]["answers"]) == {"rag"}

    # Only delta modes asked for: nothing can run, a clear error (exit 2), no traceback.
    assert main(["demo", "--questions", "1", "--modes", "combine,dyprag", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "none of the requested modes can run" in err and "combine:" in err and "dyprag:" in err


class FirstWords:
    """A compressor stand-in: the first ``target_tokens // 2`` words of each passage."""

    def compress(self, query, documents, **budget):
        from types import SimpleNamespace

        words = max(1, budget.get("target_tokens", 8) // (2 * len(documents)))
        return SimpleNamespace(texts=[" ".join(d.split()[:words]) for d in documents])


def test_hybrid_modes_run_with_an_adapter_and_are_unavailable_without(tiny_engine, demo_index):
    from hyco_rag.dyprag.testing import random_hybrid_adapter
    from hyco_rag.engine import Engine
    from hyco_rag.prompts import SHORT_ANSWER_TEMPLATE

    # The tiny engine has no adapter and none is shipped for its model: hybrid says why, rag runs.
    alone = run_demo(DemoConfig(modes="rag,hybrid", questions=1, k=2, max_new_tokens=4), engine=tiny_engine, index=demo_index)
    assert alone.modes == ["rag"] and "need a hybrid adapter" in alone.unavailable["hybrid"]
    assert set(alone.results[0].answers) == {"rag"}

    model, tokenizer = make_talkative_llama()
    engine = Engine(
        model,
        tokenizer,
        random_translator(model, scale=0.05),
        compressor=FirstWords(),
        hybrid=random_hybrid_adapter(model, num_soft_tokens=4),
        template=SHORT_ANSWER_TEMPLATE,
    )
    try:
        result = run_demo(
            DemoConfig(modes="rag,hybrid,combine-hybrid", questions=2, k=2, max_new_tokens=4), engine=engine, index=demo_index
        )
    finally:
        engine.close()
    assert result.modes == ["rag", "hybrid", "combine-hybrid"] and not result.unavailable
    assert "hybrid" in result.startup
    for item in result.results:
        rag, hybrid, combined = (item.answers[m] for m in ("rag", "hybrid", "combine-hybrid"))
        assert 4 < hybrid.context_tokens == combined.context_tokens < rag.context_tokens  # 4 soft tokens + kept text
    json.dumps(result.to_dict())


def test_bad_modes_give_a_clear_error(capsys):
    for value, bad in (("rag,combine_hyco", "combine_hyco"), ("closed-book", "closed-book"), ("rag,,RAG", "RAG")):
        assert main(["demo", "--modes", value, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"unknown mode {bad!r}" in err and ", ".join(MODE_NAMES) in err
    assert main(["demo", "--modes", " , ", "--quiet"]) == 2
    assert "at least one mode" in capsys.readouterr().err
    assert parse_modes("rag, hyco,rag,combine-hyco") == (Mode.RAG, Mode.HYCO, Mode.COMBINE_HYCO)
    assert parse_modes(["none", Mode.DYPRAG]) == (Mode.NONE, Mode.DYPRAG)
    assert DemoConfig().mode_list == (Mode.RAG, Mode.HYCO, Mode.COMBINE)


def test_index_cache_hit_does_not_re_embed(minilm, tmp_path, monkeypatch):
    from hyco_rag.data import load_demo_corpus

    passages = load_demo_corpus()[:8]
    first = DenseIndex(minilm)
    first.add(passages, cache=tmp_path)
    assert first.cache_hit is False
    files = list((tmp_path / "indexes").iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temporary file left behind

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cached index was re-embedded")

    second = DenseIndex(minilm)
    monkeypatch.setattr(minilm, "encode", no_encoding)
    second.add(passages, cache=tmp_path)
    assert second.cache_hit is True
    assert torch.equal(second._embeddings, first._embeddings)
    monkeypatch.undo()
    assert [h.passage.id for h in second.search(passages[3].text, k=1)] == [passages[3].id]

    # Other passages miss; a damaged file is rebuilt, not fatal.
    third = DenseIndex(minilm)
    third.add(passages[:3], cache=tmp_path)
    assert third.cache_hit is False
    path = index_cache_path(minilm, [f"{p.title}: {p.text}" if p.title else p.text for p in passages], tmp_path)
    path.write_bytes(b"not a safetensors file")
    fourth = DenseIndex(minilm)
    fourth.add(passages, cache=tmp_path)
    assert fourth.cache_hit is False and torch.allclose(fourth._embeddings, first._embeddings, atol=1e-5)


def test_default_threads(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert 1 <= default_threads() <= 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert 1 <= default_threads() <= 3


def test_light_encoder_matches_sentence_transformers(minilm):
    """The demo's MiniLM without sentence-transformers gives the same embeddings (and its own cache key)."""
    from hyco_rag.models import resolve_sentence_encoder
    from hyco_rag.retrieval import MeanPoolingEncoder, encoder_fingerprint

    index = DenseIndex.from_pretrained(device="cpu")
    assert isinstance(index.encoder, MeanPoolingEncoder)
    assert MeanPoolingEncoder.supports(resolve_sentence_encoder(None))
    texts = ["Super Bowl 50: The Broncos won.", "A much longer passage " * 40, "x"]
    light = index.encoder.encode(texts, batch_size=2, normalize_embeddings=True)
    reference = minilm.encode(texts, batch_size=2, convert_to_tensor=True, normalize_embeddings=True).float().cpu()
    assert torch.allclose(light, reference, atol=1e-5)
    assert encoder_fingerprint(index.encoder) != encoder_fingerprint(minilm)
    assert DenseIndex.from_pretrained(device="cpu", light=False).encoder.__class__.__name__ == "SentenceTransformer"
