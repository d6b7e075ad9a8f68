"""Budgets counted for hosted OpenAI models (``target_tokenizer="gpt-4o"``), offline."""

from __future__ import annotations

import sys

import pytest

from hyco_rag.compression.counting import OpenAITokenizer, counter_for, is_openai_name


def test_openai_names_are_recognised():
    for name in ("gpt-4o", "gpt-4o-mini", "openai:gpt-4.1", "o200k_base", "cl100k_base", "gpt-3.5-turbo", "o3-mini"):
        assert is_openai_name(name), name
    for name in ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "bert-base-uncased", "gpt2"):
        assert not is_openai_name(name), name


def test_gpt_4o_counts_offline_with_the_bundled_encoding(tiny_compressor):
    bpe_openai = pytest.importorskip("bpe_openai", reason="bpe-openai (bundles o200k_base/cl100k_base) is not installed")
    text = "The Eiffel Tower, 東京タワー and 👍🏽 were built in 1889 and 1958."
    counter = counter_for("gpt-4o", None, "encoder")
    assert counter.count(text) == len(bpe_openai.encoding_for_model("gpt-4o").encode(text))
    from hyco_rag.compression.words import segment

    assert int(counter.unit_counts(segment(text)).sum()) == counter.count(text)  # offsets attribute every token
    docs = [text * 3, "Paris is the capital of France. " * 4]
    result = tiny_compressor.compress("When was it built?", docs, target_tokens=20, target_tokenizer="gpt-4o")
    assert result.stats["tokenizer"] == "gpt-4o"
    assert sum(counter.count(t) for t in result.texts if t) == result.stats["compressed_tokens"] <= 20


def test_without_an_offline_encoding_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bpe_openai", None)  # import fails

    class Offline:
        @staticmethod
        def get_encoding(name):
            raise ConnectionError("no network")

        encoding_for_model = get_encoding

    monkeypatch.setitem(sys.modules, "tiktoken", Offline)
    with pytest.raises(ValueError, match="pip install bpe-openai"):
        OpenAITokenizer("gpt-4o")
