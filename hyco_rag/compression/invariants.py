"""What every compression must satisfy, checked on one call: shared by the property tests
(``tests/compression/test_properties.py``, bounded for CI) and ``benchmarks/fuzz_compressor.py``
(>= 10,000 cases).

:func:`check_result` returns the violated invariants of one ``compress`` call (an empty list
when all hold):

- ``order``: each passage's ``kept_spans`` are in order, disjoint, inside the original, lie on
  unit boundaries, and the output text is exactly those spans joined by separators (an
  in-order subsequence of the input units; no character invented inside a unit);
- ``budget``: the total re-counted in the target tokenizer is within the budget;
- ``protected``: a protected span (code, JSON, URL, grouped number, force token) is kept whole
  or dropped whole;
- ``utf8``: the output encodes as UTF-8 (no lone surrogates), and ``fused``: no two words were
  glued together (every maximal Latin letter/digit run of the output occurs in the input);
- ``stats``: the reported token counts equal the re-count.

:func:`random_case` draws one input from a seeded generator (multi-script prose, code, JSON,
tables, emoji, zero-width and RTL characters, empty documents); hypothesis strategies for
the same pieces are in :func:`hypothesis_strategies` (imported lazily: hypothesis is a dev
dependency).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any

from hyco_rag.compression.words import protected_spans, segment

__all__ = ["PIECES", "check_result", "hypothesis_strategies", "random_case"]

_LATIN_RUN = re.compile(r"[A-Za-z0-9]+")

#: Building blocks of generated documents: one kind per entry, several variants each.
PIECES: dict[str, list[str]] = {
    "prose": [
        "The Eiffel Tower was built in 1889 for the World's Fair.",
        "Denver Broncos defeated the Carolina Panthers 24-10 in Super Bowl 50.",
        "Mount Everest, at 8,849 m, is the highest mountain above sea level.",
        "Tesla was born in Smiljan, in the Austrian Empire, on 10 July 1856.",
        "It rained. Nobody came. The end?",
        "Dr. Smith arrived at 5 p.m. on Jan. 3, i.e. late.",
    ],
    "cjk": [
        "埃菲尔铁塔建于1889年，高330米。",
        "東京は日本の首都です。GPT-4の2020年",
        "สวัสดีครับ ประเทศไทย",
        "서울은 한국의 수도이다.",
    ],
    "rtl": ["مرحبا بالعالم، هذه جملة عربية.", "שלום עולם, זה משפט בעברית."],
    "emoji": ["👍🏽 great 👨‍👩‍👧 family 🇫🇷 flag", "ok ✅ done ❤️"],
    "zero_width": ["zero\u200bwidth\u200djoin", "soft\u00adhyphen and\u2060joiner", "nb\u00a0space"],
    "code": ["```python\ndef height(t):\n    return t.height_m\n```", "Call `compress(query, docs)` now."],
    "json": ['{"name": "Eiffel Tower", "height_m": 330}', '[1, 2, {"a": [3, 4]}]'],
    "url": ["See https://example.org/a?b=c, or mail info@example.com.", "www.example.com/path"],
    "number": ["It cost 1 000 000 euros.", "Pi is 3.14159 and e is 2.718."],
    "table": ["| city | height |\n|---|---|\n| Paris | 330 |\n| Tokyo | 333 |"],
    "whitespace": ["\n\n", "  \t ", "line one\n    indented line two\n"],
}
_QUERIES = ["When was the Eiffel Tower built?", "Who won Super Bowl 50?", "東京はどこ？", "", "height", "a b c"]
_FORCE = ["1889", "Tesla", "330", "Paris"]


def random_case(rng: random.Random, *, max_docs: int = 6, max_pieces: int = 8) -> dict[str, Any]:
    """One generated request: ``query``, ``documents`` and compression ``options``."""
    kinds = list(PIECES)
    documents = []
    for _ in range(rng.randint(0, max_docs)):
        if rng.random() < 0.08:
            documents.append(rng.choice(["", " ", "\n"]))
            continue
        pieces = [rng.choice(PIECES[rng.choice(kinds)]) for _ in range(rng.randint(1, max_pieces))]
        documents.append(rng.choice([" ", "\n", "", "  "]).join(pieces))
    options: dict[str, Any] = {}
    kind = rng.random()
    if kind < 0.45:
        options["rate"] = rng.choice([1.0, 0.5, 0.25, 0.125, 0.05, rng.uniform(0.01, 1.0)])
    elif kind < 0.8:
        options["target_tokens"] = rng.randint(1, 300)
    elif kind < 0.95:
        options["threshold"] = rng.uniform(0.0, 1.0)
    if rng.random() < 0.2:
        options["force_tokens"] = rng.sample(_FORCE, rng.randint(1, 2))
    if rng.random() < 0.15:
        options["min_tokens_per_passage"] = rng.randint(1, 4)
    if rng.random() < 0.2:
        options["reorder"] = True
    if rng.random() < 0.2:
        options["drop_empty"] = False
    return {"query": rng.choice(_QUERIES), "documents": documents, "options": options}


def _latin_runs(text: str) -> set[str]:
    return set(_LATIN_RUN.findall(text))


def check_result(
    documents: Sequence[str], options: dict[str, Any], result: Any, count: Any, *, default_rate: float = 0.25
) -> list[str]:
    """Violated invariants of ``result`` (see the module docstring); ``count(text) -> int`` is
    the target tokenizer's counter (no special tokens)."""
    problems: list[str] = []
    passages = sorted(result.passages, key=lambda p: p.index)
    if [p.index for p in passages] != list(range(len(documents))):
        return [f"order: passage indices {[p.index for p in result.passages]} for {len(documents)} documents"]
    if not options.get("reorder") and [p.index for p in result.passages] != list(range(len(documents))):
        problems.append("order: passages not in input order without reorder")
    force = tuple(options.get("force_tokens", ()))
    originals = [count(d) if d else 0 for d in documents]
    total_out = 0
    for passage, original in zip(passages, documents):
        text = passage.text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            problems.append(f"utf8: passage {passage.index}: {error}")
        seg = segment(original, force)
        starts, ends = set(seg.starts.tolist()), set(seg.ends.tolist())
        position = 0
        previous_end = -1
        for start, end in passage.kept_spans:
            if not (0 <= start < end <= len(original)) or start < previous_end:
                problems.append(f"order: passage {passage.index}: span {(start, end)} out of order or range")
                break
            if (start not in starts and start != 0) or (end not in ends and end != len(original)):
                problems.append(f"order: passage {passage.index}: span {(start, end)} cuts a unit")
                break
            piece = original[start:end]
            found = text.find(piece, position)
            if found < 0:
                problems.append(f"order: passage {passage.index}: kept span {piece[:30]!r} missing from the output")
                break
            if text[position:found].strip():
                problems.append(f"order: passage {passage.index}: text {text[position:found][:30]!r} not from a kept span")
                break
            position = found + len(piece)
            previous_end = end
        if text[position:].strip():
            problems.append(f"order: passage {passage.index}: trailing text {text[position:][:30]!r} not from a kept span")
        spans, forced_spans = protected_spans(original, force)
        for start, end in spans + forced_spans:
            # Leading/trailing whitespace of a span (a fenced block's indentation) is separator, not content.
            while start < end and original[start].isspace():
                start += 1
            while end > start and original[end - 1].isspace():
                end -= 1
            if start >= end:
                continue
            covered = [(max(s, start), min(e, end)) for s, e in passage.kept_spans if s < end and e > start]
            if covered and sum(e - s for s, e in covered) < end - start:
                problems.append(f"protected: passage {passage.index}: {original[start:end][:30]!r} kept in part")
        fused = _latin_runs(text) - _latin_runs(original)
        if fused:
            problems.append(f"fused: passage {passage.index}: {sorted(fused)[:3]} not in the input")
        recount = count(text) if text else 0
        if recount != passage.compressed_tokens:
            problems.append(f"stats: passage {passage.index}: compressed_tokens {passage.compressed_tokens} != {recount}")
        total_out += recount
    original_total = sum(originals)
    if "target_tokens" in options:
        limit: int | None = int(options["target_tokens"])
    elif "threshold" in options:
        limit = None
    else:
        limit = int(math.floor(options.get("rate", default_rate) * original_total + 1e-9))
    if limit is not None and original_total > limit and total_out > limit:
        problems.append(f"budget: {total_out} tokens for a budget of {limit}")
    if limit is not None and original_total <= limit:
        # Everything fits: every document comes back byte for byte (whitespace-only ones, which
        # hold no unit, may come back empty).
        if any(p.text != d and (d.strip() or p.text) for p, d in zip(passages, documents)):
            problems.append("budget: everything fits but the output differs from the input")
    if result.stats["compressed_tokens"] != total_out:
        problems.append(f"stats: total {result.stats['compressed_tokens']} != re-count {total_out}")
    return problems


def hypothesis_strategies() -> dict[str, Any]:
    """Hypothesis strategies: ``documents`` (lists of generated documents), ``query``, ``options``."""
    from hypothesis import strategies as st

    piece = st.one_of(
        st.sampled_from([p for values in PIECES.values() for p in values]),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
    )
    document = st.lists(piece, min_size=0, max_size=6).flatmap(
        lambda parts: st.sampled_from([" ", "\n", ""]).map(lambda sep: sep.join(parts))
    )
    budget = st.one_of(
        st.fixed_dictionaries({"rate": st.floats(0.01, 1.0)}),
        st.fixed_dictionaries({"target_tokens": st.integers(1, 200)}),
        st.fixed_dictionaries({"threshold": st.floats(0.0, 1.0)}),
        st.just({}),
    )
    extra = st.fixed_dictionaries(
        {},
        optional={
            "force_tokens": st.lists(st.sampled_from(_FORCE), min_size=1, max_size=2, unique=True),
            "min_tokens_per_passage": st.integers(1, 3),
            "reorder": st.booleans(),
            "drop_empty": st.booleans(),
        },
    )
    options = st.tuples(budget, extra).map(lambda pair: {**pair[0], **pair[1]})
    return {
        "documents": st.lists(document, min_size=0, max_size=5),
        "query": st.one_of(st.sampled_from(_QUERIES), st.text(max_size=30)),
        "options": options,
    }
