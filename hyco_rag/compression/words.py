"""Split text into the units the compressor keeps or drops: words, CJK characters, protected spans.

Why units and not model tokens: a compressed passage must stay readable text for *any* LLM,
so we never cut inside a word (or inside a UTF-8 character, an emoji sequence, a number, a
URL, a code block, a JSON value). The encoder's sub-word tokens are only used for scoring;
their scores are pooled onto these units.

The rules:

- A *unit* is a maximal run of non-whitespace characters, except in scripts written without
  spaces (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar, CJK punctuation), where every
  grapheme cluster is its own unit; Latin letters and digits inside such text stay together
  ("GPT-4", "2020" in "2020年").
- A *protected span* (fenced or inline code, a JSON object or array, a pipe/Markdown table, a
  URL or e-mail, a space-grouped number such as "1 000 000", and every occurrence of a user
  force token) is merged with the units it touches into one atomic unit: kept whole or
  dropped whole.
- Selection may keep or drop whole *pieces* instead of single units (:func:`pieces`):
  clauses (runs of units up to a comma, semicolon, colon or dash, or the sentence end) or
  sentences, so kept text stays grammatical.
- Units are re-joined with the original separator between them; when units were dropped in
  between, the separator is chosen so words never fuse (see :func:`join_units`).
- Sentences are runs of units ending in sentence punctuation or a line break, so that the
  global (sentence-level) view has natural boundaries in any language.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import regex

# Scripts written without spaces between words: one unit per grapheme cluster.
_NO_SPACE_SCRIPT = (
    r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"
    r"\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\u30fc"
)
_NO_SPACE_CHAR = regex.compile(f"[{_NO_SPACE_SCRIPT}]")
# Inside a whitespace run that holds no-space-script text: a grapheme of that script, or a
# maximal run of anything else (Latin words, digits, emoji sequences stay whole).
_MIXED_PIECE = regex.compile(rf"(?=[{_NO_SPACE_SCRIPT}])\X|(?:(?![{_NO_SPACE_SCRIPT}])\X)+")
_WHITESPACE_RUN = regex.compile(r"\S+")

_FENCED_CODE = regex.compile(r"(?ms)^[ \t]*(```|~~~)[^\n]*\n.*?^[ \t]*\1[ \t]*$|(```|~~~).*?\2")
_INLINE_CODE = regex.compile(r"`[^`\n]+`")
_URL = regex.compile(r"""(?i)\b(?:https?://|ftp://|www\.)[^\s<>"'`]+|\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+""")
_URL_TRAILING = ".,;:!?)]}'\""
_GROUPED_NUMBER = regex.compile(r"(?<![\d.,])\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?:[.,]\d+)?(?![\d])")
_JSON_START = regex.compile(r"(?m)(?:^|(?<=[\s:=(]))[\[{]")
# A Markdown / pipe table: two or more consecutive lines that start and end with "|".
_TABLE = regex.compile(r"(?m)^[ \t]*\K\|[^\n]*\|[ \t]*(?:\n[ \t]*\|[^\n]*\|[ \t]*)+$")
# A clause ends after one of these (comma, semicolon, colon, dash; CJK forms too).
_CLAUSE_END = regex.compile(r"""[,;:，、；：—–]["'”’)\]»」』】]*$""")
#: The units selection keeps or drops together (see :func:`pieces`).
GRANULARITIES = ("word", "clause", "sentence")

# A sentence ends after one of these (optionally followed by closing quotes or brackets).
_SENTENCE_END = regex.compile(r"""[.!?…。！？；]["'”’)\]»」』】]*$""")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof gen col lt sgt capt rev hon mt ft no nos vs etc e.g i.e cf al fig "
    "approx dept inc ltd co corp bros ave blvd rd jan feb mar apr jun jul aug sep sept oct nov dec "
    "u.s u.k u.n ph.d b.c a.d a.m p.m".split()
)
#: Sentences longer than this many units are split, so the global view keeps a useful grain
#: on unpunctuated text (lists, tables, code comments).
MAX_SENTENCE_UNITS = 80


@dataclass
class Segmentation:
    """Units of one text, with the facts selection needs about each.

    ``starts``/``ends`` are character offsets into ``text``; ``protected`` marks atomic
    protected units, ``forced`` those holding a user force token; ``sentence`` gives each
    unit's sentence index.
    """

    text: str
    starts: np.ndarray
    ends: np.ndarray
    protected: np.ndarray
    forced: np.ndarray
    sentence: np.ndarray

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    @property
    def num_sentences(self) -> int:
        return int(self.sentence[-1]) + 1 if len(self) else 0

    def unit_text(self, i: int) -> str:
        return self.text[self.starts[i] : self.ends[i]]

    def sentence_bounds(self) -> list[tuple[int, int]]:
        """Unit index ranges ``[first, last+1)`` of each sentence."""
        if not len(self):
            return []
        change = np.flatnonzero(np.diff(self.sentence)) + 1
        firsts = np.concatenate([[0], change])
        lasts = np.concatenate([change, [len(self)]])
        return list(zip(firsts.tolist(), lasts.tolist()))


def _json_spans(text: str) -> list[tuple[int, int]]:
    """Spans of JSON objects/arrays that parse and hold structure (a ':' or ',')."""
    if "{" not in text and "[" not in text:
        return []
    decoder = json.JSONDecoder()
    spans: list[tuple[int, int]] = []
    position = 0
    for match in _JSON_START.finditer(text):
        start = match.start()
        if start < position:
            continue
        try:
            _, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        body = text[start:end]
        if end - start >= 2 and (":" in body or "," in body):
            spans.append((start, end))
            position = end
    return spans


def protected_spans(text: str, force_tokens: Sequence[str] = ()) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(protected spans, forced spans) of ``text``, each a list of (start, end) char offsets."""
    spans: list[tuple[int, int]] = []
    for pattern in (_FENCED_CODE, _INLINE_CODE, _GROUPED_NUMBER, _TABLE):
        spans.extend(m.span() for m in pattern.finditer(text))
    for match in _URL.finditer(text):
        start, end = match.span()
        while end > start + 1 and text[end - 1] in _URL_TRAILING:
            end -= 1
        spans.append((start, end))
    spans.extend(_json_spans(text))
    forced: list[tuple[int, int]] = []
    for token in force_tokens:
        start = text.find(token)
        while start != -1:
            forced.append((start, start + len(token)))
            start = text.find(token, start + len(token))
    return spans, forced


def _raw_units(text: str) -> list[tuple[int, int]]:
    units: list[tuple[int, int]] = []
    for match in _WHITESPACE_RUN.finditer(text):
        start, end = match.span()
        piece = match.group()
        if _NO_SPACE_CHAR.search(piece):
            units.extend((start + m.start(), start + m.end()) for m in _MIXED_PIECE.finditer(piece))
        else:
            units.append((start, end))
    return units


def _merge_spans(units: list[tuple[int, int]], spans: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[bool]]:
    """Merge every run of units that a span touches into one unit; flag the merged ones."""
    if not spans:
        return units, [False] * len(units)
    # Union overlapping spans first, so one merged unit results per connected region.
    spans = sorted(s for s in spans if s[1] > s[0])
    merged_spans: list[list[int]] = []
    for start, end in spans:
        if merged_spans and start < merged_spans[-1][1]:
            merged_spans[-1][1] = max(merged_spans[-1][1], end)
        else:
            merged_spans.append([start, end])
    starts = np.fromiter((u[0] for u in units), dtype=np.int64, count=len(units))
    ends = np.fromiter((u[1] for u in units), dtype=np.int64, count=len(units))
    flags = np.zeros(len(units), dtype=bool)
    group = np.arange(len(units))
    for start, end in merged_spans:
        first = int(np.searchsorted(ends, start, side="right"))  # first unit ending after start
        last = int(np.searchsorted(starts, end, side="left"))  # units [first, last) start before end
        if last <= first:
            continue
        group[first:last] = group[first]
        flags[first:last] = True
    out: list[tuple[int, int]] = []
    out_flags: list[bool] = []
    previous = -1
    for i, (start, end) in enumerate(units):
        if group[i] == previous:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
            out_flags.append(bool(flags[i]))
            previous = group[i]
    return out, out_flags


def _is_sentence_end(text: str, start: int, end: int, next_start: int | None) -> bool:
    unit = text[start:end]
    if not _SENTENCE_END.search(unit):
        return False
    if next_start is None:
        return True
    if _NO_SPACE_CHAR.match(unit[-1]):
        return True  # 。！？ end a sentence with or without a following space
    if next_start == end:
        return False  # "3.5", "a.b" - no space after the dot
    word = unit.rstrip("\"'”’)]»").rstrip(".").lower()
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return False
    following = text[next_start]
    return not following.islower()


def segment(text: str, force_tokens: Sequence[str] = ()) -> Segmentation:
    """Units, protected/forced flags and sentence ids of ``text`` (see the module docstring)."""
    units = _raw_units(text)
    spans, forced_spans = protected_spans(text, force_tokens)
    units, protected = _merge_spans(units, spans + forced_spans)
    n = len(units)
    starts = np.fromiter((u[0] for u in units), dtype=np.int64, count=n)
    ends = np.fromiter((u[1] for u in units), dtype=np.int64, count=n)
    protected_arr = np.array(protected, dtype=bool)
    forced = np.zeros(n, dtype=bool)
    for start, end in forced_spans:
        first = int(np.searchsorted(ends, start, side="right"))
        last = int(np.searchsorted(starts, end, side="left"))
        forced[first:last] = True
    sentence = np.zeros(n, dtype=np.int64)
    current = 0
    length = 0
    for i in range(n):
        sentence[i] = current
        length += 1
        next_start = int(starts[i + 1]) if i + 1 < n else None
        boundary = length >= MAX_SENTENCE_UNITS
        if not boundary and next_start is not None and "\n" in text[ends[i] : next_start]:
            boundary = True
        if not boundary and not protected_arr[i]:
            boundary = _is_sentence_end(text, int(starts[i]), int(ends[i]), next_start)
        if boundary:
            current += 1
            length = 0
    return Segmentation(text, starts, ends, protected_arr, forced, sentence)


def _gap_separator(text: str, seg: Segmentation, left: int, right: int) -> str:
    """Separator to put between kept units ``left`` < ``right`` when units between were dropped.

    Prefers the separator right before ``right`` when it holds a line break (keeps that line's
    indentation), else the strongest line break in the gap, else the first non-empty
    separator (a space), else nothing (text written without spaces, e.g. CJK).
    """
    before_right = text[seg.ends[right - 1] : seg.starts[right]]
    if "\n" in before_right:
        return before_right
    separators = [text[seg.ends[k] : seg.starts[k + 1]] for k in range(left, right)]
    with_newline = [s for s in separators if "\n" in s]
    if with_newline:
        return max(with_newline, key=lambda s: s.count("\n"))
    for separator in separators:
        if separator:
            return separator
    # No separator anywhere in the gap (text written without spaces). Two pieces that are not
    # of such a script ("GPT-4" and "2020" in "GPT-4の2020年") would fuse into one word: a space.
    left_char, right_char = text[seg.ends[left] - 1], text[seg.starts[right]]
    if not _NO_SPACE_CHAR.match(left_char) and not _NO_SPACE_CHAR.match(right_char):
        return " "
    return ""


def join_units(seg: Segmentation, keep: np.ndarray) -> tuple[str, list[tuple[int, int]]]:
    """Text of the kept units and the character spans of the original that they cover.

    Adjacent kept units keep their original separator; across a dropped gap see
    :func:`_gap_separator`. Keeping every unit returns the original text unchanged.
    Kept spans are merged where kept units are adjacent in the original.
    """
    text = seg.text
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        return "", []
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    if kept[0] == 0:
        pieces.append(text[: seg.starts[0]])
    previous = -1
    for i in kept.tolist():
        start, end = int(seg.starts[i]), int(seg.ends[i])
        if previous >= 0:
            if i == previous + 1:
                separator = text[seg.ends[previous] : start]
            else:
                separator = _gap_separator(text, seg, previous, i)
            pieces.append(separator)
        if spans and i == previous + 1:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
        pieces.append(text[start:end])
        previous = i
    if kept[-1] == len(seg) - 1:
        pieces.append(text[seg.ends[-1] :])
        spans[-1] = (spans[-1][0], len(text))
    if kept[0] == 0:
        spans[0] = (0, spans[0][1])
    return "".join(pieces), spans


def pieces(seg: Segmentation, granularity: str = "clause") -> np.ndarray:
    """Piece id of each unit (non-decreasing): what selection keeps or drops together.

    ``"word"``: every unit alone; ``"sentence"``: whole sentences; ``"clause"``: a piece ends
    after a unit ending in clause punctuation (``, ; : — –`` and CJK forms) and at every
    sentence end; a protected unit (code, JSON, table, URL...) is a piece of its own.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    n = len(seg)
    if granularity == "word" or n == 0:
        return np.arange(n, dtype=np.int64)
    if granularity == "sentence":
        return seg.sentence.astype(np.int64, copy=True)
    out = np.zeros(n, dtype=np.int64)
    current = 0
    for i in range(n):
        if i and (
            seg.sentence[i] != seg.sentence[i - 1]
            or seg.protected[i]
            or seg.protected[i - 1]
            or _CLAUSE_END.search(seg.text[seg.starts[i - 1] : seg.ends[i - 1]])
        ):
            current += 1
        out[i] = current
    return out
