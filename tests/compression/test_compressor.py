"""HyCoCompressor with the shipped weights: the API contract, exact budgets, integrity, bad input."""

from __future__ import annotations

import asyncio
import json
import math
import resource

import pytest

from hyco_rag.compression import CompressedPassage, CompressionResult, HyCoCompressor

QUERY = "When was the Eiffel Tower built?"
DOCS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was built from 1887 to 1889 as the "
    "entrance to the 1889 World's Fair. It is named after the engineer Gustave Eiffel, whose company "
    "designed and built the tower.",
    "The Louvre is the world's most-visited museum. It houses the Mona Lisa and the Venus de Milo. "
    "The museum opened in 1793 during the French Revolution.",
    "Mount Everest is Earth's highest mountain above sea level. Its summit is 8,849 metres high. "
    "It lies in the Mahalangur Himal sub-range of the Himalayas.",
]


def _words(text: str) -> list[str]:
    return text.split()


def test_contract_fields_order_and_stats(compressor):
    result = compressor.compress(QUERY, DOCS, rate=0.5)
    assert isinstance(result, CompressionResult)
    assert [p.index for p in result.passages] == [0, 1, 2]
    for passage, original in zip(result.passages, DOCS):
        assert isinstance(passage, CompressedPassage)
        assert 0.0 <= passage.relevance <= 1.0
        assert passage.compressed_tokens <= passage.original_tokens
        assert math.isclose(passage.ratio, passage.compressed_tokens / passage.original_tokens)
        # kept_spans are slices of the original, in order, and cover exactly the kept words.
        assert all(0 <= a < b <= len(original) for a, b in passage.kept_spans)
        assert _words(passage.text) == [w for a, b in passage.kept_spans for w in original[a:b].split()]
    stats = result.stats
    for key in ("original_tokens", "compressed_tokens", "ratio", "passages_dropped", "seconds", "tokenizer"):
        assert key in stats
    assert stats["compressed_tokens"] == sum(p.compressed_tokens for p in result.passages)
    assert result.texts == [("" if p.dropped else p.text) for p in result.passages]
    json.dumps(stats)  # JSON-serialisable (the CLI writes it)


def test_answer_passage_is_most_relevant_and_keeps_the_answer(compressor):
    result = compressor.compress(QUERY, DOCS, rate=0.5)
    relevance = [p.relevance for p in result.passages]
    assert relevance.index(max(relevance)) == 0
    assert relevance[0] > 0.5 > max(relevance[1:])
    assert "1889" in result.passages[0].text and result.passages[1].dropped
    tight = compressor.compress(QUERY, DOCS, rate=0.25)
    assert "Eiffel Tower" in tight.passages[0].text  # the query's anchor words survive pruning
    assert all(p.dropped for p in tight.passages[1:])  # the budget goes to the relevant passage
    reordered = compressor.compress(QUERY, DOCS, rate=0.25, reorder=True)
    assert reordered.passages[0].index == 0
    assert [p.relevance for p in reordered.passages] == sorted(relevance, reverse=True)


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.125, 0.1])
def test_rate_budget_is_exact_in_the_target_tokenizer(compressor, reader_tokenizer, rate):
    result = compressor.compress(QUERY, DOCS, rate=rate, target_tokenizer=reader_tokenizer)
    original = sum(len(reader_tokenizer(d, add_special_tokens=False)["input_ids"]) for d in DOCS)
    recount = sum(len(reader_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in result.texts if t)
    limit = math.floor(rate * original)
    assert result.stats["original_tokens"] == original
    assert result.stats["compressed_tokens"] == recount <= limit
    assert recount >= limit - 8  # the budget is used, not wasted


def test_target_tokens_is_one_budget_over_all_passages(compressor):
    result = compressor.compress(QUERY, DOCS, target_tokens=30)
    counts = [len(compressor.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in result.texts if t]
    assert sum(counts) == result.stats["compressed_tokens"] <= 30
    assert result.stats["tokenizer"] == compressor.config.encoder
    with pytest.raises(ValueError, match="target_tokens must be a positive integer"):
        compressor.compress(QUERY, DOCS, target_tokens=0)


def test_full_rate_returns_the_documents_unchanged(compressor):
    result = compressor.compress(QUERY, DOCS, rate=1.0)
    assert result.texts == DOCS
    assert all(p.ratio == 1.0 for p in result.passages)


def test_threshold_and_floor_and_force_tokens(compressor):
    loose = compressor.compress(QUERY, DOCS, threshold=0.0)
    assert loose.texts == DOCS
    with pytest.warns(UserWarning, match="kept nothing"):
        strict = compressor.compress(QUERY, DOCS, threshold=1.0)
    assert strict.stats["compressed_tokens"] == 0
    assert "kept nothing" in strict.stats["warning"]
    floored = compressor.compress(QUERY, DOCS, target_tokens=30, min_tokens_per_passage=5)
    assert all(p.compressed_tokens >= 4 for p in floored.passages)  # 5 tokens of units, recount may merge
    forced = compressor.compress(QUERY, DOCS, rate=0.2, force_tokens=["Himalayas"])
    assert "Himalayas." in forced.passages[2].text


def test_bad_input_gets_a_clear_error(compressor):
    cases = [
        (dict(rate=float("nan")), "rate"),
        (dict(rate=-0.1), "rate"),
        (dict(rate=1.5), "rate"),
        (dict(target_tokens=-5), "target_tokens"),
        (dict(rate=0.5, threshold=0.5), "at most one"),
        (dict(min_tokens_per_passage=-1), "min_tokens_per_passage"),
        (dict(force_tokens="word"), "force_tokens"),
        (dict(force_tokens=["  "]), "force_tokens[0]"),
        (dict(target_tokenizer=3.5), "target_tokenizer"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as error:
            compressor.compress(QUERY, DOCS, **kwargs)
        assert message in str(error.value)
    with pytest.raises(ValueError, match=r"documents\[1\] must be a string, got int"):
        compressor.compress(QUERY, ["ok", 3])
    with pytest.raises(ValueError, match="not a single string"):
        compressor.compress(QUERY, "just one string")
    with pytest.raises(ValueError, match="query must be a string"):
        compressor.compress(None, DOCS)
    with pytest.raises(ValueError, match="unknown compression option"):
        compressor.compress_batch([QUERY], [DOCS], ratio=0.5)


def test_empty_query_and_empty_documents(compressor):
    result = compressor.compress("", DOCS, rate=0.5)
    assert result.stats["compressed_tokens"] <= result.stats["original_tokens"] // 2
    result = compressor.compress(QUERY, ["", "   \n ", DOCS[0]], rate=0.5)
    assert [p.dropped for p in result.passages] == [True, True, False]
    assert result.texts[:2] == ["", ""]
    assert compressor.compress(QUERY, [], rate=0.5).passages == []
    kept = compressor.compress(QUERY, ["", DOCS[0]], rate=0.5, drop_empty=False)
    assert not kept.passages[0].dropped and kept.passages[0].text == ""


def test_cjk_code_json_and_emoji_stay_intact(compressor, reader_tokenizer):
    json_blob = '{"name": "Eiffel Tower", "height_m": 330, "built": [1887, 1889]}'
    code = "```python\ndef height(tower):\n    return tower.height_m\n```"
    docs = [
        "埃菲尔铁塔位于法国巴黎。它建于1887年至1889年。铁塔高330米。🗼 是它的表情符号。",
        f"Here is the record: {json_blob} and a helper:\n{code}\nDone. 👍🏽 Great 👨‍👩‍👧 family.",
        "The tower 🇫🇷 was built for the World's Fair of 1889 in Paris.",
    ]
    for rate in (0.9, 0.6, 0.3):
        result = compressor.compress(QUERY, docs, rate=rate, target_tokenizer=reader_tokenizer)
        for passage, original in zip(result.passages, docs):
            text = passage.text
            text.encode("utf-8")  # valid UTF-8, no broken surrogates
            assert (json_blob in text) or ("{" not in text)  # JSON whole or absent
            assert (code in text) or ("```" not in text)  # code block whole or absent
            for emoji in ("👍🏽", "👨‍👩‍👧", "🇫🇷"):
                if emoji[0] in text:
                    assert emoji in text  # grapheme clusters never split
            for word in text.split():
                if word.isascii():
                    assert word in original.split() or word in json_blob or word in code
            assert all(original[a:b] for a, b in passage.kept_spans)


def test_hundred_thousand_token_document_is_chunked_not_truncated(tiny_compressor):
    """Uses a tiny random encoder (same code path) so 100k tokens take seconds, not minutes."""
    paragraph = "Sentence number {i} talks about topic {t} and the value {v}. "
    text = "".join(paragraph.format(i=i, t=i % 17, v=i * 7) for i in range(7200))
    needle = "The secret launch code is 4417-ALPHA."
    text = text[: len(text) // 2] + needle + " " + text[len(text) // 2 :]
    n_tokens = len(tiny_compressor.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert n_tokens > 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = tiny_compressor.compress("What is the launch code?", [text], rate=0.01, force_tokens=["4417-ALPHA."])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    passage = result.passages[0]
    assert passage.original_tokens == n_tokens  # every token was seen
    assert passage.compressed_tokens <= math.floor(0.01 * n_tokens)
    assert "4417-ALPHA." in passage.text  # a forced word from the middle of the document survives
    assert result.stats["encoder_tokens"] == n_tokens
    assert grown_mb < 1500
    # Chunks cover the whole document, overlapping, within max_length.
    from hyco_rag.compression.features import document_view, plan_chunks

    view = document_view(tiny_compressor.tokenizer, text)
    chunks = plan_chunks(view, 200, 32)
    assert chunks[0][0] == 0 and chunks[-1][1] == view.num_tokens
    assert all(b > a and b - a <= 200 for a, b in chunks)
    assert all(next_start < end for (_, end), (next_start, _) in zip(chunks, chunks[1:]))


def test_compress_batch_equals_single_calls(compressor):
    queries = [QUERY, "How high is Mount Everest?"]
    batch = compressor.compress_batch(queries, [DOCS, DOCS], rate=0.3)
    singles = [compressor.compress(q, DOCS, rate=0.3) for q in queries]
    assert [r.texts for r in batch] == [r.texts for r in singles]
    assert "8,849" in " ".join(batch[1].texts)
    with pytest.raises(ValueError, match="2 queries but 1"):
        compressor.compress_batch(queries, [DOCS])


async def test_concurrent_async_calls_are_batched_and_match_sync(compressor):
    queries = [QUERY, "How high is Mount Everest?", "Which museum houses the Mona Lisa?", "Who designed the tower?"]
    expected = [compressor.compress(q, DOCS, rate=0.3).texts for q in queries]
    before = compressor._batcher.batches_run if compressor._batcher else 0
    results = await asyncio.gather(*(compressor.acompress(q, DOCS, rate=0.3) for q in queries))
    assert [r.texts for r in results] == expected
    assert compressor._batcher.batches_run - before < len(queries)  # shared forwards
    with pytest.raises(ValueError, match="rate"):
        await compressor.acompress(QUERY, DOCS, rate=-1)


def test_save_and_load_round_trip(compressor, tmp_path):
    from hyco_rag import __version__

    compressor.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["library_version"] == __version__ and config["encoder"]
    size = (tmp_path / "model" / "model.safetensors").stat().st_size
    assert size < 8 * 1024 * 1024
    reloaded = HyCoCompressor.from_pretrained(tmp_path / "model", device="cpu", dtype=compressor.dtype)
    assert reloaded.compress(QUERY, DOCS, rate=0.3).texts == compressor.compress(QUERY, DOCS, rate=0.3).texts
    # Saving over an existing folder replaces it atomically.
    compressor.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(FileNotFoundError, match="not a compressor folder"):
        HyCoCompressor.from_pretrained(tmp_path, device="cpu")


def test_default_constructor_uses_shipped_weights():
    c = HyCoCompressor(device="cpu")
    assert c.config.training.get("data")  # the shipped config records what it was trained on
    assert c.compress(QUERY, DOCS[:1], rate=0.5).passages[0].compressed_tokens > 0
