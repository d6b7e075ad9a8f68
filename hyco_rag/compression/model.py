"""The scorer: a query-aware cross-encoder with a local (word) view and a global (sentence,
passage) view, mixed by a learned gate, plus a cheap coarse view for early exit.

Input is ``query [SEP] passage-chunk`` so every passage token attends to the query
(cross-encoding). The network is the frozen backbone (optionally with low-rank deltas on the
layers above ``exit_layer``) and small heads over *pooled states*:

- *coarse* heads read the states after ``exit_layer`` layers and score chunks and sentences;
  the compressor runs the upper layers only on chunks this pass keeps (early exit);
- *local* head: retention logit per word (is this word part of what answers the query?);
- *global* heads: sentence and passage relevance from pooled states;
- *gate*: per word, g = sigmoid(W [word; sentence]) mixes them:
  ``keep = g * local + (1 - g) * (sentence + passage_weight * passage)``.

Besides pooled vectors the heads read a few query-match features that a frozen encoder
cannot express through an MLP on its own: cosine of the pooled states to the query encoded
alone (the bi-encoder signal), max-similarity of passage tokens to query tokens (late
interaction), and IDF-weighted overlap of encoder token ids with the query (lexical, language
agnostic). This is HyCo2's local/global balance (arXiv 2505.15774 §3.2) on the hard (text)
side; :class:`PooledStates` is where a soft-token adapter for our own served model can attach.

Only the deltas and the heads are trained and saved (:meth:`HyCoScorer.trainable_state_dict`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from hyco_rag.compression.config import CompressorConfig
from hyco_rag.dyprag.config import DeltaConfig
from hyco_rag.dyprag.injection import find_target_modules, layer_index
from hyco_rag.dyprag.layer import lora_delta_autograd

logger = logging.getLogger(__name__)

#: Bump when pooled features change meaning: cached training features are keyed by it.
FEATURE_VERSION = 5
#: Match features per pooled unit (see :meth:`HyCoScorer.pooled_states`).
CHUNK_FEATURES = 8
SENTENCE_FEATURES = 9
WORD_FEATURES = 4


class _TrainedDelta:
    """Forward hook adding one trained low-rank delta, ``y = W x + s * B (A x)``, to a backbone linear.

    The factors are parameters registered on the linear itself (``lora_a`` ``[r, in]``,
    ``lora_b`` ``[out, r]``, so saved keys read ``backbone.<module>.lora_a``), and the sum is
    DyPRAG's differentiable :func:`~hyco_rag.dyprag.layer.lora_delta_autograd` with a single
    slot shared by every row: one LoRA implementation for the project. B starts at zero, so an
    untrained delta leaves the backbone exactly as it was; :meth:`merge` folds the delta into
    the weight for inference (no extra matmuls, the hook then passes outputs through).
    """

    def __init__(self, module: nn.Linear, scaling: float) -> None:
        self.scaling = float(scaling)
        self.merged = False
        self._slot = torch.zeros(1, dtype=torch.long)

    def __call__(self, module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return output
        x = inputs[0]
        scale = torch.full((1,), self.scaling, device=x.device, dtype=torch.float32)
        delta = lora_delta_autograd(
            x.reshape(1, -1, x.shape[-1]), module.lora_a[None], module.lora_b[None], scale, self._slot.to(x.device)
        )
        return output + delta.reshape(output.shape)

    @torch.no_grad()
    def merge(self, module: nn.Linear) -> None:
        if self.merged:
            return
        delta = (module.lora_b.float() @ module.lora_a.float()) * self.scaling
        if not torch.isfinite(delta).all():
            raise ValueError("refusing to merge a LoRA delta holding NaN or inf (corrupt weights?)")
        module.weight.add_(delta.to(module.weight.dtype))
        self.merged = True


class _Head(nn.Module):
    """``logit = feature_mlp(match features) + state_mlp(pooled states)``.

    The match features (lexical overlap, bi-encoder cosine, late interaction) carry most of
    the relevance signal of a frozen encoder and need few examples to weigh; the state branch
    (dropout, zero-initialised output) adds what the pooled vectors know on top, without
    drowning the features while data is scarce.
    """

    def __init__(self, state_dim: int, feature_dim: int, hidden: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(feature_dim, 32), nn.GELU(), nn.Linear(32, 1))
        self.states = nn.Sequential(
            nn.LayerNorm(state_dim), nn.Dropout(dropout), nn.Linear(state_dim, hidden), nn.GELU(), nn.Linear(hidden, 1)
        )
        nn.init.zeros_(self.states[-1].weight)
        nn.init.zeros_(self.states[-1].bias)

    def forward(self, states: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return (self.features(features.to(self.features[0].weight.dtype)) + self.states(states)).squeeze(-1)


@dataclass
class BatchLayout:
    """Where each token of a padded chunk batch belongs (all indices flat over the batch).

    ``token_word``/``token_sentence``: (B, L) word-slot / sentence-slot index of each passage
    token, -1 for query, special and padding tokens. A *slot* is one (chunk, unit) or
    (chunk, sentence) pair: a unit in the overlap of two chunks has two slots.
    ``word_sentence``: sentence slot of each word slot; ``sentence_chunk``: chunk (batch row)
    of each sentence slot. ``query_mask``: (B, L) True on query tokens. ``token_lexical``:
    (B, L) IDF weight of a passage token whose id occurs in the query (normalised by the
    query's total IDF), ``sentence_lexical``/``chunk_lexical``: share of the query's IDF mass
    each sentence slot / chunk covers (distinct query tokens). ``chunk_request``: (B,) which
    request (query) each row belongs to, for features relative to the request's best.

    ``attention_mask`` holds segment codes: 0 padding, 1 query side ([CLS], query, separator),
    2 passage side (passage tokens and the closing separator); see :meth:`HyCoScorer._mask`.
    """

    attention_mask: torch.Tensor
    query_mask: torch.Tensor
    token_word: torch.Tensor
    token_sentence: torch.Tensor
    word_sentence: torch.Tensor
    sentence_chunk: torch.Tensor
    token_lexical: torch.Tensor
    sentence_lexical: torch.Tensor
    chunk_lexical: torch.Tensor
    chunk_request: torch.Tensor

    def to(self, device: torch.device) -> BatchLayout:
        return BatchLayout(*(getattr(self, f.name).to(device) for f in fields(self)))

    @property
    def num_words(self) -> int:
        return int(self.word_sentence.shape[0])

    @property
    def num_sentences(self) -> int:
        return int(self.sentence_chunk.shape[0])


@dataclass
class PooledStates:
    """Pooled states of a chunk batch: what every head reads (and a future soft-token adapter).

    Training on a frozen backbone caches these per chunk; :meth:`cat` batches cached ones.
    """

    cls: torch.Tensor  # (B, H)
    passage: torch.Tensor  # (B, H) mean over the passage side
    query: torch.Tensor  # (B, H) the query side's mean state (it read the passage: cross-encoded)
    chunk_features: torch.Tensor  # (B, CHUNK_FEATURES)
    sentence: torch.Tensor  # (S, H)
    sentence_chunk: torch.Tensor  # (S,) row of each sentence slot
    sentence_features: torch.Tensor  # (S, SENTENCE_FEATURES)
    word: torch.Tensor  # (W, H)
    word_sentence: torch.Tensor  # (W,) sentence slot of each word slot
    word_features: torch.Tensor  # (W, WORD_FEATURES)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PooledStates:
        values = {}
        for f in fields(self):
            t = getattr(self, f.name)
            values[f.name] = t.to(device) if t.dtype == torch.long else t.to(device=device, dtype=dtype or t.dtype)
        return PooledStates(**values)

    def slice_rows(self, start: int, end: int) -> PooledStates:
        """Rows ``[start, end)`` with their sentence and word slots (slots are in row order)."""
        s0, s1 = (
            int(x) for x in torch.searchsorted(self.sentence_chunk, torch.tensor([start, end], device=self.sentence_chunk.device))
        )
        w0, w1 = (
            int(x) for x in torch.searchsorted(self.word_sentence, torch.tensor([s0, s1], device=self.word_sentence.device))
        )
        return PooledStates(
            self.cls[start:end],
            self.passage[start:end],
            self.query[start:end],
            self.chunk_features[start:end],
            self.sentence[s0:s1],
            self.sentence_chunk[s0:s1] - start,
            self.sentence_features[s0:s1],
            self.word[w0:w1],
            self.word_sentence[w0:w1] - s0,
            self.word_features[w0:w1],
        )

    @staticmethod
    def cat(items: list[PooledStates]) -> PooledStates:
        rows = sentences = 0
        sentence_chunk, word_sentence = [], []
        for item in items:
            sentence_chunk.append(item.sentence_chunk + rows)
            word_sentence.append(item.word_sentence + sentences)
            rows += item.cls.shape[0]
            sentences += item.sentence.shape[0]
        return PooledStates(
            torch.cat([i.cls for i in items]),
            torch.cat([i.passage for i in items]),
            torch.cat([i.query for i in items]),
            torch.cat([i.chunk_features for i in items]),
            torch.cat([i.sentence for i in items]),
            torch.cat(sentence_chunk),
            torch.cat([i.sentence_features for i in items]),
            torch.cat([i.word for i in items]),
            torch.cat(word_sentence),
            torch.cat([i.word_features for i in items]),
        )


class GlobalHeads(nn.Module):
    """Chunk (passage) and sentence relevance logits from pooled states and match features."""

    def __init__(self, hidden_size: int, head_hidden: int) -> None:
        super().__init__()
        self.chunk = _Head(3 * hidden_size, CHUNK_FEATURES, head_hidden)
        self.sentence = _Head(3 * hidden_size, SENTENCE_FEATURES + CHUNK_FEATURES, head_hidden)

    def forward(self, pooled: PooledStates) -> tuple[torch.Tensor, torch.Tensor]:
        rows = pooled.sentence_chunk
        chunk = self.chunk(torch.cat([pooled.cls, pooled.passage, pooled.query], dim=-1), pooled.chunk_features)
        sentence = self.sentence(
            torch.cat([pooled.sentence, pooled.cls[rows], pooled.query[rows]], dim=-1),
            torch.cat([pooled.sentence_features, pooled.chunk_features[rows]], dim=-1),
        )
        return chunk, sentence


def _segment_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep = index >= 0
    values, index = values[keep], index[keep]
    out = values.new_zeros((size, values.shape[-1]))
    out.index_add_(0, index, values)
    counts = values.new_zeros(size).index_add_(0, index, values.new_ones(index.shape[0]))
    return out, counts


def _segment_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of ``values`` rows grouped by ``index`` (rows with index -1 ignored)."""
    total, counts = _segment_sum(values, index, size)
    return total / counts.clamp_min(1).unsqueeze(-1)


def _segment_max(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    keep = index >= 0
    out = values.new_full((size,), -1.0)
    return out.scatter_reduce(0, index[keep], values[keep], reduce="amax", include_self=True)


class HyCoScorer(nn.Module):
    """Backbone (frozen; optional low-rank deltas above ``exit_layer``) + coarse, local, global heads and gate."""

    def __init__(self, config: CompressorConfig, backbone: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        hidden = backbone.config.hidden_size
        layers, embeddings = self._find_layers(backbone)
        # Plain references, not submodules: the backbone already owns them (no duplicate state keys).
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "embeddings", embeddings)
        num_layers = backbone.config.num_hidden_layers
        if config.exit_layer >= num_layers:
            raise ValueError(f"exit_layer ({config.exit_layer}) must be below the backbone's {num_layers} layers")
        if config.lora_rank > 0:
            self._add_lora()
        self.coarse = GlobalHeads(hidden, config.head_hidden)
        self.fine = GlobalHeads(hidden, config.head_hidden)
        self.local = _Head(3 * hidden, WORD_FEATURES + SENTENCE_FEATURES, config.head_hidden)
        self.gate = nn.Linear(2 * hidden + WORD_FEATURES, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)  # start as a 50/50 mix, as HyCo2's gate does

    # -- backbone plumbing ---------------------------------------------------------------------
    @staticmethod
    def _find_layers(backbone: nn.Module) -> tuple[nn.ModuleList | None, nn.Module | None]:
        """The per-layer ModuleList and embeddings of BERT-family encoders (fast staged path).

        Other architectures fall back to one full forward with ``output_hidden_states``.
        """
        encoder = getattr(backbone, "encoder", None)
        layers = getattr(encoder, "layer", None)
        embeddings = getattr(backbone, "embeddings", None)
        if isinstance(layers, nn.ModuleList) and embeddings is not None:
            return layers, embeddings
        logger.info("backbone %s has no BERT-style layer list; using the full-forward path", type(backbone).__name__)
        return None, None

    def _lora_config(self) -> DeltaConfig:
        """The low-rank delta targets as a DyPRAG :class:`DeltaConfig` (same PEFT-style matching)."""
        rank = self.config.lora_rank
        return DeltaConfig(target_modules=tuple(self.config.lora_targets), rank=rank, scaling=self.config.lora_alpha / rank)

    def _add_lora(self) -> None:
        delta_config = self._lora_config()
        try:
            matched = find_target_modules(self.backbone, delta_config)
        except ValueError as error:
            raise ValueError(f"lora_targets {list(self.config.lora_targets)}: {error}") from None
        targets = {name: module for name, module in matched.items() if layer_index(name) >= self.config.exit_layer}
        if not targets:
            raise ValueError(
                f"no backbone linear layer matched lora_targets {list(self.config.lora_targets)} above exit_layer "
                f"{self.config.exit_layer}; set lora_targets to this architecture's module names"
            )
        self._deltas: dict[str, tuple[nn.Linear, _TrainedDelta]] = {}
        rank = delta_config.rank
        for name, module in targets.items():
            weight = module.weight
            module.register_parameter(
                "lora_a", nn.Parameter(torch.empty(rank, module.in_features, dtype=weight.dtype, device=weight.device))
            )
            module.register_parameter(
                "lora_b", nn.Parameter(torch.zeros(module.out_features, rank, dtype=weight.dtype, device=weight.device))
            )
            nn.init.kaiming_uniform_(module.lora_a, a=math.sqrt(5))
            hook = _TrainedDelta(module, delta_config.scaling)
            module.register_forward_hook(hook)
            self._deltas[name] = (module, hook)
        logger.debug("added %d low-rank deltas", len(targets))

    def merge_lora(self) -> None:
        """Fold every trained delta into its base weight (inference); idempotent."""
        for module, hook in getattr(self, "_deltas", {}).values():
            hook.merge(module)

    @staticmethod
    def _is_trainable(name: str) -> bool:
        return not name.startswith("backbone.") or ".lora_" in name

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: the deltas and the heads (a few MB)."""
        return {n: t.detach().contiguous() for n, t in self.state_dict().items() if self._is_trainable(n)}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if self._is_trainable(n)]

    def _mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive 4D mask from segment codes (works with eager and SDPA BERT-family layers).

        With ``attention="asymmetric"`` the passage side ("[CLS] passage [SEP]", first in the
        input) does not attend to the query, while query tokens attend to everything: the
        passage states are exactly what the frozen bi-encoder computes for the passage alone
        (so pooled sentences compare with the query encoded alone as the encoder was trained
        to), and the query side reads the passage (the cross-encoding the query-aware heads
        and match features use). ``"full"``: plain joint attention.
        """
        key_ok = attention_mask > 0
        if self.config.attention == "asymmetric" and bool((attention_mask == 2).any()):
            query_side = attention_mask == 1
            passage_side = attention_mask == 2
            allowed = key_ok[:, None, :] & ~(passage_side[:, :, None] & query_side[:, None, :])
            return (
                torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
                .masked_fill(~allowed, torch.finfo(dtype).min)
                .unsqueeze(1)
            )
        mask = key_ok[:, None, None, :].to(dtype)
        return (1.0 - mask) * torch.finfo(dtype).min

    def lower(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """States after ``exit_layer`` layers (the coarse view reads these)."""
        if self.layers is None:
            out = self.backbone(
                input_ids=input_ids,
                token_type_ids=token_type_ids,
                attention_mask=(attention_mask > 0).long(),
                output_hidden_states=True,
            )
            self._full_cache = out.hidden_states[-1]
            return out.hidden_states[self.config.exit_layer]
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        mask = self._mask(attention_mask, hidden.dtype)
        for layer in self.layers[: self.config.exit_layer]:
            hidden = _layer_output(layer(hidden, mask))
        return hidden

    def upper(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final states from the exit-layer states (runs only on chunks the coarse pass keeps)."""
        if self.layers is None:
            cached = getattr(self, "_full_cache", None)
            if cached is None or cached.shape[:2] != hidden.shape[:2]:
                raise RuntimeError("full-forward backbones need lower() and upper() on the same batch")
            self._full_cache = None
            return cached
        mask = self._mask(attention_mask, hidden.dtype)
        for layer in self.layers[self.config.exit_layer :]:
            hidden = _layer_output(layer(hidden, mask))
        return hidden

    def encode_queries(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries encoded alone, mean-pooled at the exit layer and at the last layer (bi-encoder view)."""
        lower = self.lower(input_ids, token_type_ids, attention_mask)
        final = self.upper(lower, attention_mask)
        weights = (attention_mask > 0).unsqueeze(-1).to(lower.dtype)
        denominator = weights.sum(1).clamp_min(1)
        return (lower * weights).sum(1) / denominator, (final * weights).sum(1) / denominator

    # -- heads ---------------------------------------------------------------------------------
    def pooled_states(self, hidden: torch.Tensor, layout: BatchLayout, query: torch.Tensor | None = None) -> PooledStates:
        """Pool token states onto chunks, sentence slots and word slots, with match features.

        ``query``: (B, H) the chunk's query encoded alone at the same layer (None or zeros
        for an empty query).
        """
        B, L, H = hidden.shape
        flat = hidden.reshape(B * L, H)
        passage_mask = layout.token_word >= 0
        # Late interaction: max cosine of each passage token to the chunk's query tokens.
        normed = F.normalize(hidden.float(), dim=-1)
        sims = normed @ normed.transpose(1, 2)
        sims = sims.masked_fill(~layout.query_mask[:, None, :], -1.0)
        has_query = layout.query_mask.any(dim=1, keepdim=True)
        match = torch.where(has_query & passage_mask, sims.amax(dim=-1), torch.zeros_like(sims[..., 0]))
        counts = passage_mask.sum(1).clamp_min(1)
        # Passage vector = mean over the passage side with its specials: with the asymmetric
        # mask this is exactly the sentence-transformers embedding of the passage.
        side = (layout.attention_mask == 2) if bool((layout.attention_mask == 2).any()) else passage_mask
        passage = (hidden * side.unsqueeze(-1)).sum(1) / side.sum(1).clamp_min(1).unsqueeze(-1)
        if query is None:
            query = hidden.new_zeros((B, H))
        q_norm = F.normalize(query.float(), dim=-1)  # zeros stay zeros

        tok_sent = layout.token_sentence.reshape(-1)
        tok_word = layout.token_word.reshape(-1)
        match_flat = match.reshape(-1, 1)
        lexical_flat = layout.token_lexical.reshape(-1, 1).float()
        sentence = _segment_mean(flat, tok_sent, layout.num_sentences)
        word = _segment_mean(flat, tok_word, layout.num_words)

        top = match.masked_fill(~passage_mask, -1.0).topk(min(8, L), dim=1).values.clamp_min(0).mean(1)
        passage_cos = (F.normalize(passage.float(), dim=-1) * q_norm).sum(-1)
        requests = layout.chunk_request
        n_req = int(requests.max()) + 1 if requests.numel() else 0

        def request_max(values: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
            best = torch.full((n_req,), -4.0, device=values.device, dtype=values.dtype)
            return best.scatter_reduce(0, owner, values, reduce="amax")[owner]

        chunk_lexical = layout.chunk_lexical.float()
        chunk_features = torch.stack(
            [
                match.sum(1) / counts,
                match.amax(1),
                top,
                passage_cos,
                chunk_lexical,
                torch.log1p(counts.float()) / 6.0,
                passage_cos - request_max(passage_cos, requests),
                chunk_lexical - request_max(chunk_lexical, requests),
            ],
            dim=-1,
        )
        s_rows = layout.sentence_chunk
        s_match_mean = _segment_mean(match_flat, tok_sent, layout.num_sentences).squeeze(-1)
        s_match_max = _segment_max(match_flat.squeeze(-1), tok_sent, layout.num_sentences)
        s_cos = (F.normalize(sentence.float(), dim=-1) * q_norm[s_rows]).sum(-1)
        s_tokens = _segment_sum(match_flat.new_ones(match_flat.shape), tok_sent, layout.num_sentences)[1]
        # Rank of the sentence's cosine inside its chunk, as a share (1 = best in chunk).
        s_best = torch.full((B,), -2.0, device=hidden.device).scatter_reduce(0, s_rows, s_cos, reduce="amax")
        s_lexical = layout.sentence_lexical.float()
        s_owner = requests[s_rows]
        sentence_features = torch.stack(
            [
                s_match_mean,
                s_match_max,
                s_cos,
                s_cos - s_best[s_rows],
                s_lexical,
                torch.log1p(s_tokens) / 5.0,
                s_cos - request_max(s_cos, s_owner),
                s_lexical - request_max(s_lexical, s_owner),
                s_lexical * s_cos,
            ],
            dim=-1,
        )
        w_match = _segment_mean(match_flat, tok_word, layout.num_words).squeeze(-1)
        w_lexical = _segment_mean(lexical_flat, tok_word, layout.num_words).squeeze(-1)
        w_cos = (F.normalize(word.float(), dim=-1) * q_norm[s_rows[layout.word_sentence]]).sum(-1)
        w_tokens = _segment_sum(match_flat.new_ones(match_flat.shape), tok_word, layout.num_words)[1]
        word_features = torch.stack([w_match, w_lexical, w_cos, torch.log1p(w_tokens) / 3.0], dim=-1)
        dtype = hidden.dtype
        q_weights = layout.query_mask.unsqueeze(-1).to(hidden.dtype)
        query_state = (hidden * q_weights).sum(1) / q_weights.sum(1).clamp_min(1)
        return PooledStates(
            cls=hidden[:, 0],
            passage=passage.to(dtype),
            query=query_state,
            chunk_features=chunk_features.to(dtype),
            sentence=sentence,
            sentence_chunk=layout.sentence_chunk,
            sentence_features=sentence_features.to(dtype),
            word=word,
            word_sentence=layout.word_sentence,
            word_features=word_features.to(dtype),
        )

    def coarse_heads(self, pooled: PooledStates) -> dict[str, torch.Tensor]:
        chunk, sentence = self.coarse(pooled)
        return {"chunk": chunk, "sentence": sentence}

    def fine_heads(self, pooled: PooledStates) -> dict[str, torch.Tensor]:
        chunk, sentence = self.fine(pooled)
        ws = pooled.word_sentence
        local = self.local(
            torch.cat([pooled.word, pooled.sentence[ws], pooled.query[pooled.sentence_chunk[ws]]], dim=-1),
            torch.cat([pooled.word_features, pooled.sentence_features[ws]], dim=-1),
        )
        gate = torch.sigmoid(self.gate(torch.cat([pooled.word, pooled.sentence[ws], pooled.word_features], dim=-1)).squeeze(-1))
        global_logit = sentence[ws] + self.config.passage_weight * chunk[pooled.sentence_chunk[ws]]
        keep = gate * local + (1 - gate) * global_logit
        return {"chunk": chunk, "sentence": sentence, "local": local, "gate": gate, "keep": keep}

    def coarse_scores(self, hidden: torch.Tensor, layout: BatchLayout, query: torch.Tensor | None = None):
        """Chunk and sentence logits from the exit-layer states."""
        return self.coarse_heads(self.pooled_states(hidden, layout, query))

    def fine_scores(self, hidden: torch.Tensor, layout: BatchLayout, query: torch.Tensor | None = None):
        """Chunk, sentence, local word, gate and mixed keep logits from the final states."""
        return self.fine_heads(self.pooled_states(hidden, layout, query))


def _layer_output(output: torch.Tensor | tuple) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output
