"""Units, protected spans, sentences and re-joining: never inside a word, never fused words."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyco_rag.compression.words import join_units, segment


def units(text: str, **kwargs) -> list[str]:
    seg = segment(text, **kwargs)
    return [seg.unit_text(i) for i in range(len(seg))]


@pytest.mark.parametrize(
    "text",
    [
        "Hello world. This is Dr. Smith of the U.S. Army!",
        "  leading and trailing whitespace \n\n",
        "北京是中国的首都。GPT-4很强大！",
        "emoji 👍🏽 and a family 👨‍👩‍👧 and flags 🇫🇷🇩🇪 ok",
        'JSON {"a": [1, 2], "b": {"c": null}} and code ```x = 1\ny = 2``` end',
        "",
        "   ",
    ],
)
def test_keeping_every_unit_returns_the_original_text(text):
    seg = segment(text)
    joined, spans = join_units(seg, np.ones(len(seg), dtype=bool))
    assert joined == (text if len(seg) else "")
    if len(seg):
        assert spans == [(0, len(text))]


def test_units_are_whitespace_words_and_cjk_characters():
    assert units("Hello, world! (approx.)") == ["Hello,", "world!", "(approx.)"]
    assert units("北京是GPT-4的2020年") == ["北", "京", "是", "GPT-4", "的", "2020", "年"]
    # Grapheme clusters stay whole: skin tone, ZWJ family, flags.
    assert units("a 👍🏽 b 👨‍👩‍👧 c 🇫🇷") == ["a", "👍🏽", "b", "👨‍👩‍👧", "c", "🇫🇷"]
    # Thai (no spaces) is split per grapheme, combining vowels stay on their consonant.
    thai = units("สวัสดี")
    assert "".join(thai) == "สวัสดี" and all(len(u) <= 3 for u in thai)


def test_protected_spans_are_atomic():
    text = 'See https://example.com/a?b=1, then {"key": [1, 2, 3], "x": "y z"} and `inline code` plus ```py\ndef f(x):\n    return x\n``` and 1 000 000 people.'
    seg = segment(text)
    got = [seg.unit_text(i) for i in range(len(seg))]
    assert "https://example.com/a?b=1," in got
    assert '{"key": [1, 2, 3], "x": "y z"}' in got
    assert "`inline code`" in got
    assert "```py\ndef f(x):\n    return x\n```" in got
    assert "1 000 000" in got
    protected = {seg.unit_text(i) for i in np.flatnonzero(seg.protected)}
    assert '{"key": [1, 2, 3], "x": "y z"}' in protected and "1 000 000" in protected
    json.loads('{"key": [1, 2, 3], "x": "y z"}')


def test_force_tokens_mark_whole_words():
    seg = segment("The Notre-Dame's bells and the Eiffel Tower", force_tokens=["Dame", "Eiffel Tower"])
    forced = [seg.unit_text(i) for i in np.flatnonzero(seg.forced)]
    assert forced == ["Notre-Dame's", "Eiffel Tower"]  # never a piece of a word; multi-word kept as one unit


def test_sentences_respect_abbreviations_and_cjk_stops():
    seg = segment("Dr. Smith went to the U.S. Army. He left! 他来了。她走了。")
    words = [seg.unit_text(i) for i in range(len(seg))]
    sentences = {}
    for i, s in enumerate(seg.sentence.tolist()):
        sentences.setdefault(s, []).append(words[i])
    texts = [" ".join(v) for v in sentences.values()]
    assert texts[0] == "Dr. Smith went to the U.S. Army."
    assert texts[1] == "He left!"
    assert len(texts) == 4


def test_dropping_units_never_fuses_words_and_keeps_line_breaks():
    text = "alpha beta gamma\n\ndelta epsilon\n    indented zeta"
    seg = segment(text)
    keep = np.array([True, False, False, True, False, True, True])
    joined, spans = join_units(seg, keep)
    assert joined == "alpha\n\ndelta\n    indented zeta"
    assert [text[a:b] for a, b in spans] == ["alpha", "delta", "indented zeta"]
    # Every output word is a whole original word.
    original_words = set(text.split())
    assert set(joined.split()) <= original_words


def test_random_drops_keep_integrity_on_mixed_text():
    text = "Paris is the capital of France. 北京是首都。 Emoji 👍🏽 stays, JSON {\"a\": 1} stays; URL https://x.org/y ok."
    seg = segment(text)
    rng = np.random.default_rng(0)
    for _ in range(50):
        keep = rng.random(len(seg)) < 0.5
        joined, spans = join_units(seg, keep)
        kept = [seg.unit_text(i) for i in np.flatnonzero(keep)]
        # Kept units appear in order, whole, separated only by original separators.
        position = 0
        for unit in kept:
            found = joined.find(unit, position)
            assert found >= 0
            position = found + len(unit)
        assert joined.encode("utf-8").decode("utf-8") == joined
        for a, b in spans:
            assert text[a:b].strip() == text[a:b].strip()  # spans are valid slices
        latin = [w for w in joined.split() if w.isascii()]
        assert all(w in text.split() for w in latin)


def test_tables_are_protected_and_pieces_follow_clauses():
    from hyco_rag.compression.words import pieces, segment

    text = "Heights, in metres: see below.\n| city | height |\n|---|---|\n| Paris | 330 |\nThat is all."
    seg = segment(text)
    units = [seg.unit_text(i) for i in range(len(seg))]
    table = "| city | height |\n|---|---|\n| Paris | 330 |"
    assert table in units and seg.protected[units.index(table)]
    ids = pieces(seg, "clause")
    groups = [" ".join(u for u, p in zip(units, ids) if p == k) for k in range(ids.max() + 1)]
    assert groups == ["Heights,", "in metres:", "see below.", table, "That is all."]
    assert pieces(seg, "word").tolist() == list(range(len(seg)))
    assert pieces(seg, "sentence").tolist() == seg.sentence.tolist()
    with pytest.raises(ValueError, match="granularity"):
        pieces(seg, "paragraph")


def test_words_of_spaced_scripts_never_fuse_across_a_gap_in_unspaced_text():
    import numpy as np

    from hyco_rag.compression.words import join_units, segment

    seg = segment("中abc文def")
    assert [seg.unit_text(i) for i in range(len(seg))] == ["中", "abc", "文", "def"]
    assert join_units(seg, np.array([True, True, False, True]))[0] == "中abc def"
    assert join_units(seg, np.array([True, False, True, False]))[0] == "中文"
