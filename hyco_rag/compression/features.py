"""From (query, documents) to encoder chunks and the layouts the scorer pools over.

Long passages are cut into overlapping chunks of at most ``max_length`` encoder tokens
(query and special tokens included), at unit boundaries and preferably at sentence
boundaries, so every token of every document is scored: nothing is silently truncated.
A unit in the overlap of two chunks is scored in both and its scores averaged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from hyco_rag.compression.model import BatchLayout
from hyco_rag.compression.words import Segmentation, segment

logger = logging.getLogger(__name__)


#: Function words that carry no query-matching signal (English; other languages rely on IDF).
_STOPWORDS = frozenset(
    "the a an of in on at to for is was are were be been being what which who whom whose when where why how "
    "did do does done and or but by with from as that this these those it its into than then there their they "
    "he she his her him we you your i me my our not no yes can could would should will shall may might has have "
    "had about also such".split()
)


def _content_table(tokenizer) -> np.ndarray:
    """Per vocabulary id: True when the token can signal a query match (has a letter or digit,
    is not a special token or a stopword)."""
    vocab = tokenizer.get_vocab()
    table = np.zeros(max(vocab.values()) + 1, dtype=bool)
    special = set(tokenizer.all_special_ids)
    for token, index in vocab.items():
        word = token.lstrip("#").lstrip("\u0120\u2581").lower()
        if index in special or word in _STOPWORDS:
            continue
        table[index] = any(ch.isalnum() for ch in word)
    return table


class PairTemplate:
    """How the encoder lays out a (query, passage) pair: special tokens and token types.

    Read once from the tokenizer (``tokenizer("x", "y")`` and its ``sequence_ids``) so any
    BERT/RoBERTa/XLM-R style tokenizer works without hard-coded [CLS]/[SEP] ids.
    """

    def __init__(self, tokenizer) -> None:
        encoded = tokenizer("x", "y")
        ids = list(encoded["input_ids"])
        types = list(encoded.get("token_type_ids") or [0] * len(ids))
        sequence_ids = encoded.sequence_ids(0)
        self.parts: list[tuple[str, int, int]] = []  # ("special", id, type) | ("query"|"passage", 0, type)
        seen: set[int] = set()
        for token, type_id, sequence in zip(ids, types, sequence_ids):
            if sequence is None:
                self.parts.append(("special", token, type_id))
            elif sequence not in seen:
                seen.add(sequence)
                # Passage first: "[CLS] passage [SEP]" is then exactly what the encoder sees for
                # the passage alone, so (with the asymmetric mask) its states are the
                # bi-encoder's; the query follows and reads the passage.
                self.parts.append(("passage" if sequence == 0 else "query", 0, type_id))
        if seen != {0, 1}:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} does not encode text pairs")
        self.num_special = sum(1 for kind, _, _ in self.parts if kind == "special")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        single = tokenizer("x")
        single_sequence = single.sequence_ids(0)
        self.single_parts = [
            ("special", t, ty) if sq is None else ("query", 0, ty)
            for t, ty, sq in zip(
                single["input_ids"], single.get("token_type_ids") or [0] * len(single["input_ids"]), single_sequence
            )
        ]
        self.content = _content_table(tokenizer)

    def build_single(self, query: Sequence[int]) -> tuple[list[int], list[int]]:
        """input_ids and token_type_ids of the query encoded alone (bi-encoder view)."""
        ids: list[int] = []
        types: list[int] = []
        for kind, token, type_id in self.single_parts:
            if kind == "special":
                ids.append(token)
                types.append(type_id)
            else:
                ids.extend(query)
                types.extend([type_id] * len(query))
        return ids, types

    def build(self, query: Sequence[int], passage: Sequence[int]) -> tuple[list[int], list[int], int, int]:
        """input_ids, token_type_ids, query start position, passage start position.

        The passage side ends where the query starts (passage tokens plus the specials around
        them); everything from the query on is the query side.
        """
        ids: list[int] = []
        types: list[int] = []
        query_start = passage_start = 0
        for kind, token, type_id in self.parts:
            if kind == "special":
                ids.append(token)
                types.append(type_id)
            elif kind == "query":
                query_start = len(ids)
                ids.extend(query)
                types.extend([type_id] * len(query))
            else:
                passage_start = len(ids)
                ids.extend(passage)
                types.extend([type_id] * len(passage))
        return ids, types, query_start, passage_start


@dataclass
class DocumentView:
    """One document: its units and sentences, its encoder tokens and how they map to units."""

    seg: Segmentation
    token_ids: np.ndarray
    token_unit: np.ndarray
    chunks: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])


@dataclass
class Chunk:
    """One encoder input: a query with tokens ``[start, end)`` of document ``doc`` of request ``request``."""

    request: int
    doc: int
    start: int
    end: int
    input_ids: list[int]
    token_type_ids: list[int]
    query_start: int
    query_len: int
    passage_start: int
    units: np.ndarray  # distinct unit ids covered, ascending
    sentences: np.ndarray  # distinct sentence ids covered, ascending
    token_slot: np.ndarray  # per passage token: index into ``units``
    unit_sentence_slot: np.ndarray  # per unit in ``units``: index into ``sentences``
    token_lexical: np.ndarray | None = None  # per passage token: IDF weight if it matches the query
    sentence_lexical: np.ndarray | None = None  # per sentence slot: query IDF mass covered
    chunk_lexical: float = 0.0

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_query(tokenizer, query: str, max_query_tokens: int) -> list[int]:
    ids = tokenizer(query, add_special_tokens=False, verbose=False)["input_ids"] if query else []
    if len(ids) > max_query_tokens:
        logger.warning("query has %d encoder tokens; scoring with its first %d", len(ids), max_query_tokens)
        ids = ids[:max_query_tokens]
    return list(ids)


def document_view(tokenizer, text: str, force_tokens: Sequence[str] = ()) -> DocumentView:
    """Segment ``text`` and map its encoder tokens to units (a token belongs to the unit it starts in)."""
    seg = segment(text, force_tokens)
    if not len(seg):
        return DocumentView(seg, np.zeros(0, np.int64), np.zeros(0, np.int64))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    if ids.size == 0:
        # e.g. text of characters the tokenizer drops: give every unit one unknown token.
        unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
        return DocumentView(seg, np.full(len(seg), unk, np.int64), np.arange(len(seg), dtype=np.int64))
    unit = np.searchsorted(seg.ends, offsets[:, 0], side="right")
    unit = np.minimum(unit, len(seg) - 1)
    return DocumentView(seg, ids, unit.astype(np.int64))


def plan_chunks(view: DocumentView, capacity: int, overlap: int) -> list[tuple[int, int]]:
    """Token ranges of the chunks of one document (see the module docstring)."""
    total = view.num_tokens
    if total == 0:
        return []
    if total <= capacity:
        return [(0, total)]
    unit = view.token_unit
    sentence_of_token = view.seg.sentence[unit]
    chunks: list[tuple[int, int]] = []
    start = 0
    while start < total:
        end = min(start + capacity, total)
        if end < total:
            # Prefer a sentence boundary in the last quarter of the window, else a unit boundary.
            lo = start + max(1, (3 * capacity) // 4)
            window = np.flatnonzero(sentence_of_token[lo:end] != sentence_of_token[lo - 1 : end - 1])
            if window.size:
                end = lo + int(window[-1])
            else:
                cut = end
                while cut > start + 1 and unit[cut] == unit[cut - 1]:
                    cut -= 1
                if cut > start + capacity // 2:
                    end = cut
        chunks.append((start, end))
        if end >= total:
            break
        next_start = max(end - overlap, start + 1)
        while next_start > start + 1 and next_start < end and unit[next_start] == unit[next_start - 1]:
            next_start -= 1
        start = next_start
    return chunks


def build_chunks(
    request: int,
    doc: int,
    view: DocumentView,
    query_ids: list[int],
    template: PairTemplate,
    max_length: int,
    overlap: int,
) -> list[Chunk]:
    capacity = max_length - len(query_ids) - template.num_special
    view.chunks = plan_chunks(view, capacity, overlap)
    chunks = []
    for start, end in view.chunks:
        ids, types, query_start, passage_start = template.build(query_ids, view.token_ids[start:end].tolist())
        token_units = view.token_unit[start:end]
        units, token_slot = np.unique(token_units, return_inverse=True)
        unit_sentences = view.seg.sentence[units]
        sentences, unit_sentence_slot = np.unique(unit_sentences, return_inverse=True)
        chunks.append(
            Chunk(
                request,
                doc,
                start,
                end,
                ids,
                types,
                query_start,
                len(query_ids),
                passage_start,
                units,
                sentences,
                token_slot.reshape(-1),
                unit_sentence_slot.reshape(-1),
            )
        )
    return chunks


def add_lexical_features(chunks: Sequence[Chunk], query_ids: Sequence[int], content: np.ndarray) -> None:
    """IDF-weighted query-token overlap per token, sentence slot and chunk (one request's chunks).

    Document frequencies are counted over the request's own chunks, so a query word that every
    passage repeats weighs little and a rare one weighs much, in any language the tokenizer
    covers.
    """
    query = np.unique(np.asarray([q for q in query_ids if 0 <= q < content.shape[0] and content[q]], dtype=np.int64))
    for chunk in chunks:
        n_tokens = chunk.end - chunk.start
        chunk.token_lexical = np.zeros(n_tokens, dtype=np.float32)
        chunk.sentence_lexical = np.zeros(len(chunk.sentences), dtype=np.float32)
        chunk.chunk_lexical = 0.0
    if query.size == 0 or not chunks:
        return
    passages = [np.asarray(c.input_ids[c.passage_start : c.passage_start + (c.end - c.start)], dtype=np.int64) for c in chunks]
    present = [np.isin(query, ids) for ids in passages]
    df = np.sum(present, axis=0).astype(np.float64)
    n = len(chunks)
    idf = np.log((n + 1.0) / (df + 0.5))
    weight = idf / idf.sum()
    for chunk, ids, has in zip(chunks, passages, present):
        position = np.searchsorted(query, ids)
        position = np.minimum(position, query.size - 1)
        matched = query[position] == ids
        assert chunk.token_lexical is not None and chunk.sentence_lexical is not None  # set above
        chunk.token_lexical[matched] = weight[position[matched]]
        chunk.chunk_lexical = float(weight[has].sum())
        if matched.any():
            slots = chunk.unit_sentence_slot[chunk.token_slot[matched]]
            for slot in np.unique(slots):
                distinct = np.unique(position[matched][slots == slot])
                chunk.sentence_lexical[slot] = float(weight[distinct].sum())


def collate(chunks: Sequence[Chunk], pad_id: int) -> tuple[dict[str, torch.Tensor], BatchLayout]:
    """Pad a list of chunks into tensors and build the flat slot layout for pooling."""
    batch = len(chunks)
    length = max(len(c) for c in chunks)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((batch, length), dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    query_mask = torch.zeros((batch, length), dtype=torch.bool)
    token_word = torch.full((batch, length), -1, dtype=torch.long)
    token_sentence = torch.full((batch, length), -1, dtype=torch.long)
    token_lexical = torch.zeros((batch, length), dtype=torch.float32)
    sentence_lexical: list[np.ndarray] = []
    chunk_lexical = torch.zeros(batch, dtype=torch.float32)
    chunk_request = torch.as_tensor([c.request for c in chunks], dtype=torch.long)
    if chunk_request.numel():
        chunk_request = torch.unique(chunk_request, return_inverse=True)[1]
    word_sentence: list[np.ndarray] = []
    sentence_chunk: list[np.ndarray] = []
    word_offset = sentence_offset = 0
    for row, chunk in enumerate(chunks):
        n = len(chunk)
        input_ids[row, :n] = torch.as_tensor(chunk.input_ids)
        token_type_ids[row, :n] = torch.as_tensor(chunk.token_type_ids)
        attention_mask[row, :n] = 1  # query side ...
        attention_mask[row, : chunk.query_start] = 2  # ... except the leading "[CLS] passage [SEP]"
        query_mask[row, chunk.query_start : chunk.query_start + chunk.query_len] = True
        p0, p1 = chunk.passage_start, chunk.passage_start + (chunk.end - chunk.start)
        token_word[row, p0:p1] = torch.from_numpy(chunk.token_slot + word_offset)
        token_sentence[row, p0:p1] = torch.from_numpy(chunk.unit_sentence_slot[chunk.token_slot] + sentence_offset)
        if chunk.token_lexical is not None:
            token_lexical[row, p0:p1] = torch.from_numpy(chunk.token_lexical)
            chunk_lexical[row] = chunk.chunk_lexical
            sentence_lexical.append(chunk.sentence_lexical)
        else:
            sentence_lexical.append(np.zeros(len(chunk.sentences), dtype=np.float32))
        word_sentence.append(chunk.unit_sentence_slot + sentence_offset)
        sentence_chunk.append(np.full(len(chunk.sentences), row, dtype=np.int64))
        word_offset += len(chunk.units)
        sentence_offset += len(chunk.sentences)
    layout = BatchLayout(
        attention_mask=attention_mask,
        query_mask=query_mask,
        token_word=token_word,
        token_sentence=token_sentence,
        word_sentence=torch.from_numpy(np.concatenate(word_sentence)) if word_sentence else torch.zeros(0, dtype=torch.long),
        sentence_chunk=torch.from_numpy(np.concatenate(sentence_chunk)) if sentence_chunk else torch.zeros(0, dtype=torch.long),
        token_lexical=token_lexical,
        sentence_lexical=torch.from_numpy(np.concatenate(sentence_lexical)) if sentence_lexical else torch.zeros(0),
        chunk_lexical=chunk_lexical,
        chunk_request=chunk_request,
    )
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}, layout


def collate_queries(queries: Sequence[Sequence[int]], template: PairTemplate) -> dict[str, torch.Tensor]:
    """Padded inputs of queries encoded alone."""
    built = [template.build_single(q) for q in queries]
    length = max(len(ids) for ids, _ in built)
    input_ids = torch.full((len(built), length), template.pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(built), length), dtype=torch.long)
    attention_mask = torch.zeros((len(built), length), dtype=torch.long)
    for row, (ids, types) in enumerate(built):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        token_type_ids[row, : len(ids)] = torch.as_tensor(types)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


def token_batches(lengths: Sequence[int], max_tokens: int, max_rows: int = 256) -> list[list[int]]:
    """Group item indices, sorted by length, into batches of at most ``max_tokens`` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest_if = max(longest, lengths[i])
        if current and (longest_if * (len(current) + 1) > max_tokens or len(current) >= max_rows):
            batches.append(current)
            current, longest_if = [], lengths[i]
        current.append(i)
        longest = longest_if
    if current:
        batches.append(current)
    return batches
