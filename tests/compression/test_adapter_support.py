"""What the LangChain / LlamaIndex compression adapters share from the core: per-passage stats,
metadata copies, option checks, lazy loading, and the test-support helpers."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import pytest

from hyco_rag.compression import CompressedPassage, testing
from hyco_rag.compression.adapters import OPTIONS, LazyCompressor, check_adapter_options, compress_options
from hyco_rag.metadata import copy_metadata


def test_passage_stats_are_plain_json_and_the_index_can_be_overridden() -> None:
    passage = CompressedPassage(
        index=2, text="kept", original_tokens=10, compressed_tokens=3, ratio=0.3, relevance=0.9, kept_spans=[(0, 4)]
    )
    stats = passage.stats()
    assert stats == {
        "index": 2,
        "original_tokens": 10,
        "compressed_tokens": 3,
        "ratio": 0.3,
        "relevance": 0.9,
        "kept_spans": [[0, 4]],
        "dropped": False,
    }
    assert json.loads(json.dumps(stats)) == stats and "text" not in stats
    assert passage.stats(index=5)["index"] == 5
    empty = CompressedPassage(index=0, text=" ", original_tokens=4, compressed_tokens=0, ratio=0.0, relevance=0.1,
                              kept_spans=[])
    assert empty.stats()["dropped"]  # nothing left, even when drop_empty kept the document


def test_boolean_budgets_are_refused_before_pydantic_turns_them_into_numbers() -> None:
    from hyco_rag.compression.adapters import reject_boolean

    for value in (True, False):
        with pytest.raises(ValueError, match="rate must be a number, not a boolean"):
            reject_boolean(value, "rate")
    assert reject_boolean(0.5, "rate") == 0.5 and reject_boolean(None, "rate") is None


def test_metadata_copies_are_deep_and_fall_back_to_a_fresh_dict() -> None:
    original = {"source": {"id": 1}, "tags": ["a"]}
    copied = copy_metadata(original)
    copied["source"]["id"] = 2
    copied["tags"].append("b")
    assert original == {"source": {"id": 1}, "tags": ["a"]}
    lock = threading.Lock()  # deepcopy refuses locks
    shallow = copy_metadata({"lock": lock})
    assert shallow["lock"] is lock and shallow is not copy_metadata({"lock": lock})


def settings(**values):
    base = {name: None for name in OPTIONS} | {"compressor": None, "model_name_or_path": None, "device": None}
    return SimpleNamespace(**(base | values))


def test_adapter_options_are_checked_and_forwarded() -> None:
    check_adapter_options(settings(rate=0.5))
    with pytest.raises(ValueError, match="at most one of rate, target_tokens and threshold; got rate, threshold"):
        check_adapter_options(settings(rate=0.5, threshold=0.2))
    core = SimpleNamespace(compress=lambda *a: None, acompress=lambda *a: None)
    with pytest.raises(ValueError, match="already built"):
        check_adapter_options(settings(compressor=core, device="cpu"))
    with pytest.raises(TypeError, match="lacks acompress"):
        check_adapter_options(settings(compressor=SimpleNamespace(compress=lambda *a: None)))
    assert compress_options(settings(rate=0.25, drop_empty=True)) == {name: None for name in OPTIONS} | {
        "rate": 0.25,
        "drop_empty": True,
    }


def test_lazy_compressor_loads_once_even_under_concurrent_first_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    import hyco_rag.compression

    calls = []
    sentinel = object()
    monkeypatch.setattr(
        hyco_rag.compression.HyCoCompressor,
        "from_pretrained",
        staticmethod(lambda path=None, device=None: calls.append((path, device)) or sentinel),
    )
    loader = LazyCompressor()
    assert not loader.loaded and calls == []

    async def many():
        return await asyncio.gather(*(loader.aget("some/folder", None) for _ in range(4)))

    assert asyncio.run(many()) == [sentinel] * 4
    assert loader.get() is sentinel and calls == [("some/folder", None)]


def test_demo_passages_and_bad_titles() -> None:
    passages = testing.demo_passages(per_title=3)
    assert [p.title for p in passages] == [testing.DEMO_TITLES[0]] * 3 + [testing.DEMO_TITLES[1]] * 3
    assert all(p.text.strip() for p in passages)
    with pytest.raises(ValueError, match="no demo-corpus article"):
        testing.demo_passages(["No Such Article"])
    with pytest.raises(ValueError, match="not one string"):
        testing.demo_passages("Super Bowl 50")


def test_random_weights_compressor_round_trips_and_honours_budgets(tmp_path) -> None:
    with pytest.raises(ValueError, match="directory"):
        testing.build_test_compressor(random_weights=True)
    core = testing.build_test_compressor(tmp_path, random_weights=True, device="cpu")
    assert (tmp_path / "compressor" / "config.json").is_file()
    passage = testing.demo_passages(per_title=1)[0].text
    result = core.compress("Who won Super Bowl 50?", [passage], target_tokens=20)
    assert 0 < result.passages[0].compressed_tokens <= 20

    class Patch:  # a minimal monkeypatch: record_acompress only needs setattr
        @staticmethod
        def setattr(target, name, value):
            setattr(target, name, value)

    awaited = testing.record_acompress(Patch, core)
    again = asyncio.run(core.acompress("Who won Super Bowl 50?", [passage], target_tokens=20))
    assert awaited == ["Who won Super Bowl 50?"] and again.texts == result.texts
    with pytest.raises(AssertionError, match="async path"):
        testing.sync_path_forbidden()
