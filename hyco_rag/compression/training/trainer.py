"""Train the compressor's heads and low-rank deltas on the frozen backbone.

Losses (per listwise group: one query with its gold and distractor passages):

- passage view: softmax cross-entropy of the gold chunk(s) against the group's other chunks,
  plus a binary term so relevance is calibrated (fine and coarse heads);
- sentence view: listwise cross-entropy over every sentence of the group, plus binary terms,
  targets = max(answer/evidence sentence, reader-distilled soft label) (fine and coarse);
- local view: binary retention of the answer words and, in evidence sentences, of the
  query's content words that anchor the answer (what a reader needs to locate it);
- gated keep score: binary target max(local, sentence target x passage label).

Two paths, picked by ``CompressorConfig.lora_rank``:

- ``lora_rank == 0`` (the shipped CPU default): the backbone stays frozen, so one forward per
  chunk gives its pooled states once (:class:`PooledStates`, cached in memory and on disk);
  the heads then train for many epochs on those in seconds. This is what makes training fit
  a shared 2-core CPU.
- ``lora_rank > 0`` (GPU): low-rank deltas on the layers above ``exit_layer`` train end to end;
  the frozen lower layers' states are cached (bf16) after the first epoch.

Checkpoints (weights + optimizer moments, safetensors + JSON, never pickle) are written
atomically; ``resume=True`` continues from the last one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclasses_fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hyco_rag.compression.compressor import build_scorer, save_scorer
from hyco_rag.compression.config import CompressorConfig
from hyco_rag.compression.features import (
    Chunk,
    PairTemplate,
    add_lexical_features,
    build_chunks,
    collate,
    collate_queries,
    document_view,
    encode_query,
)
from hyco_rag.compression.model import HyCoScorer, PooledStates
from hyco_rag.compression.training.data import TrainGroup
from hyco_rag.compression.training.distill import soft_labels_for

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"


@dataclass
class TrainConfig:
    """Optimisation settings (the model's own settings live in :class:`CompressorConfig`)."""

    epochs: float = field(default=8.0, metadata={"help": "passes over the training groups"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps (overrides epochs)"})
    groups_per_step: int = field(default=8, metadata={"help": "listwise groups per optimizer step"})
    lr: float = field(default=5e-4, metadata={"help": "learning rate of the low-rank deltas"})
    head_lr: float = field(default=1e-3, metadata={"help": "learning rate of the heads and gate"})
    extract_batch_tokens: int = field(default=8192, metadata={"help": "padded tokens per feature-extraction forward"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup: float = field(default=0.05, metadata={"help": "share of steps with linear warm-up"})
    local_pos_weight: float = field(default=4.0, metadata={"help": "BCE weight of positive (answer) words"})
    seed: int = field(default=0, metadata={"help": "data order and initialisation seed"})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 autocast (None: on CUDA or a CPU with native bf16)"})
    cache_lower: bool = field(default=True, metadata={"help": "cache frozen lower-layer states across epochs"})
    checkpoint_every: int = field(default=200, metadata={"help": "steps between atomic checkpoints"})
    time_limit_s: float | None = field(default=None, metadata={"help": "stop (and save) after this many seconds"})

    def __post_init__(self) -> None:
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ValueError(f"epochs must be a positive number, got {self.epochs!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps!r}")
        for name in ("groups_per_step", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("lr", "head_lr", "local_pos_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup!r}")


@dataclass
class _Prepared:
    """A group turned into chunks with per-slot targets (built once, reused every epoch)."""

    group: TrainGroup
    query_ids: list[int]
    chunks: list[Chunk]
    chunk_target: np.ndarray
    sentence_target: list[np.ndarray]  # per chunk, per sentence slot
    word_local: list[np.ndarray]  # per chunk, per word slot
    word_keep: list[np.ndarray]


def _overlap_mask(starts: np.ndarray, ends: np.ndarray, spans) -> np.ndarray:
    mask = np.zeros(starts.shape[0], dtype=bool)
    for start, end in spans:
        mask |= (ends > start) & (starts < end)
    return mask


_STRIP = ".,;:!?\"'()[]{}«»“”‘’"


def _normal(word: str) -> str:
    return word.strip(_STRIP).lower()


def prepare_group(
    index: int, group: TrainGroup, tokenizer, template: PairTemplate, config: CompressorConfig, distilled: dict
) -> _Prepared:
    from hyco_rag.compression.features import _STOPWORDS

    query_words = {_normal(w) for w in group.query.split()} - _STOPWORDS - {""}
    query_ids = encode_query(tokenizer, group.query, config.max_query_tokens)
    soft = soft_labels_for(group, distilled) or {}
    chunks: list[Chunk] = []
    chunk_target, sentence_target, word_local, word_keep = [], [], [], []
    for p, passage in enumerate(group.passages):
        view = document_view(tokenizer, passage.text)
        seg = view.seg
        if not len(seg):
            continue
        answer = _overlap_mask(seg.starts, seg.ends, passage.answer_spans)
        evidence_units = _overlap_mask(seg.starts, seg.ends, passage.evidence_spans)
        sentence = np.zeros(seg.num_sentences, dtype=np.float32)
        if evidence_units.any():
            sentence[np.unique(seg.sentence[evidence_units])] = 1.0
        if answer.any():
            sentence[np.unique(seg.sentence[answer])] = 1.0
        # Local retention: the answer words, and in evidence sentences the words that anchor
        # the answer to the question (the query's content words): the reader needs both.
        in_evidence = (sentence[seg.sentence] > 0) & (passage.label > 0)
        anchors = np.fromiter((_normal(seg.unit_text(u)) in query_words for u in range(len(seg))), dtype=bool, count=len(seg))
        local = (answer | (anchors & in_evidence)).astype(np.float32)
        if p in soft and soft[p].shape[0] == seg.num_sentences:
            sentence = np.maximum(sentence, soft[p])
        sentence *= float(passage.label > 0)
        keep = np.maximum(local, sentence[seg.sentence] * passage.label)
        doc_chunks = build_chunks(index, p, view, query_ids, template, config.max_length, config.chunk_overlap)
        multi = len(doc_chunks) > 1 and sentence.any()
        for chunk in doc_chunks:
            s_target = sentence[chunk.sentences]
            label = passage.label * (float(s_target.max() >= 0.5) if multi else 1.0)
            chunks.append(chunk)
            chunk_target.append(label)
            sentence_target.append(s_target)
            word_local.append(local[chunk.units])
            word_keep.append(keep[chunk.units])
    add_lexical_features(chunks, query_ids, template.content)
    return _Prepared(group, query_ids, chunks, np.asarray(chunk_target, dtype=np.float32), sentence_target, word_local, word_keep)


def _listwise(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean over groups with a positive of the cross-entropy against normalised targets."""
    losses = []
    for g in torch.unique(groups):
        members = groups == g
        t = targets[members]
        if t.sum() <= 0:
            continue
        losses.append(-(t / t.sum() * F.log_softmax(logits[members].float(), dim=0)).sum())
    return torch.stack(losses).mean() if losses else logits.sum() * 0.0


def _bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    if logits.numel() == 0 or weights.sum() <= 0:
        return logits.sum() * 0.0
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), targets, weight=weights, pos_weight=torch.tensor(pos_weight, device=logits.device), reduction="sum"
    )
    return loss / weights.sum().clamp_min(1.0)


class Trainer:
    """Runs the optimisation; :meth:`train` returns the trained scorer."""

    def __init__(
        self,
        config: CompressorConfig,
        train_config: TrainConfig,
        groups: list[TrainGroup],
        output: str | Path,
        *,
        distilled: dict | None = None,
        device: str | torch.device | None = None,
        resume: bool = False,
    ) -> None:
        from hyco_rag.models import default_device

        if not groups:
            raise ValueError("no training groups: check the data folder and the data options")
        self.config = config
        self.train_config = train_config
        self.output = Path(output)
        self.device = torch.device(device) if device is not None else default_device()
        torch.manual_seed(train_config.seed)
        self.model, self.tokenizer = build_scorer(config)
        self.model.to(self.device)
        self.template = PairTemplate(self.tokenizer)
        self.groups = groups
        self.distilled = distilled or {}
        if train_config.bf16 is None:
            from hyco_rag.compression.compressor import cpu_has_fast_bf16

            self.bf16 = self.device.type == "cuda" or cpu_has_fast_bf16()
        else:
            self.bf16 = bool(train_config.bf16)
        head_params = [p for n, p in self.model.named_parameters() if not n.startswith("backbone.")]
        lora_params = [p for n, p in self.model.named_parameters() if n.startswith("backbone.") and ".lora_" in n]
        self.optimizer = torch.optim.AdamW(
            [{"params": lora_params, "lr": train_config.lr}, {"params": head_params, "lr": train_config.head_lr}],
            weight_decay=train_config.weight_decay,
            foreach=True,
        )
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        if resume:
            self._resume()

    # -- checkpoints -----------------------------------------------------------------------------
    def _resume(self) -> None:
        from safetensors.torch import load_file

        state_path = self.output / STATE_NAME
        if not state_path.is_file():
            logger.info("no checkpoint in %s; starting from scratch", self.output)
            return
        from hyco_rag.compression.config import WEIGHTS_NAME

        weights = load_file(str(self.output / WEIGHTS_NAME))
        self.model.load_state_dict(weights, strict=False)
        state = json.loads(state_path.read_text(encoding="utf-8"))
        moments = load_file(str(self.output / OPTIMIZER_NAME))
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for i, param in enumerate(params):
            if f"{i}.exp_avg" in moments:
                self.optimizer.state[param] = {
                    "step": torch.tensor(float(state["optimizer_step"])),
                    "exp_avg": moments[f"{i}.exp_avg"].to(self.device),
                    "exp_avg_sq": moments[f"{i}.exp_avg_sq"].to(self.device),
                }
        self.step = int(state["step"])
        self.history = state.get("history", [])
        logger.info("resumed from step %d", self.step)

    def save(self) -> Path:
        """Weights + config (the loadable folder) and the optimizer state, each written atomically."""
        from hyco_rag.results import save_safetensors_atomic, write_json_atomic

        self.config.training = {**self.config.training, "steps": self.step}
        save_scorer(self.config, self.model, self.output)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        moments: dict[str, torch.Tensor] = {}
        optimizer_step = 0
        for i, param in enumerate(params):
            state = self.optimizer.state.get(param)
            if state:
                moments[f"{i}.exp_avg"] = state["exp_avg"].detach().cpu().contiguous()
                moments[f"{i}.exp_avg_sq"] = state["exp_avg_sq"].detach().cpu().contiguous()
                optimizer_step = int(state["step"])
        save_safetensors_atomic(moments, self.output / OPTIMIZER_NAME)
        write_json_atomic(
            self.output / STATE_NAME,
            {
                "step": self.step,
                "optimizer_step": optimizer_step,
                "history": self.history[-200:],
                "train_config": asdict(self.train_config),
            },
        )
        return self.output

    # -- features (frozen backbone) ----------------------------------------------------------------
    def _forward_pooled(self, block: list[_Prepared], grad: bool, keys: list[tuple[int, int]] | None = None):
        """Pooled states (coarse, fine) of the chunks of ``block`` groups, in group order."""
        chunks = [c for prep in block for c in prep.chunks]
        inputs, layout = collate(chunks, self.template.pad_id)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        layout = layout.to(self.device)
        q_inputs = {k: v.to(self.device) for k, v in collate_queries([p.query_ids for p in block], self.template).items()}
        group_of_row = torch.as_tensor([g for g, prep in enumerate(block) for _ in prep.chunks], device=self.device)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with torch.no_grad(), autocast:
            q_lower, q_final = self.model.encode_queries(**q_inputs)
            empty = torch.as_tensor([not p.query_ids for p in block], device=self.device).unsqueeze(-1)
            q_lower, q_final = q_lower.masked_fill(empty, 0.0), q_final.masked_fill(empty, 0.0)
            if keys is not None and self.train_config.cache_lower and all(k in self._cache for k in keys):
                hidden = torch.zeros(
                    (len(chunks), inputs["input_ids"].shape[1], self.model.backbone.config.hidden_size), device=self.device
                )
                for row, key in enumerate(keys):
                    cached = self._cache[key]
                    hidden[row, : cached.shape[0]] = cached.to(self.device, torch.float32)
            else:
                hidden = self.model.lower(**inputs).float()
                if keys is not None and self.train_config.cache_lower:
                    for row, (key, chunk) in enumerate(zip(keys, chunks)):
                        self._cache[key] = hidden[row, : len(chunk)].to("cpu", torch.bfloat16)
            coarse = self.model.pooled_states(hidden, layout, q_lower[group_of_row])
        with torch.set_grad_enabled(grad), autocast:
            final = self.model.upper(hidden, inputs["attention_mask"])
            fine = self.model.pooled_states(final, layout, q_final[group_of_row])
        return coarse, fine

    def extract_features(self, prepared: list[_Prepared]) -> list[tuple[PooledStates, PooledStates]]:
        """One frozen forward per chunk; per group its (coarse, fine) pooled states (bf16, CPU)."""
        from tqdm.auto import tqdm

        features: list[tuple[PooledStates, PooledStates]] = []
        budget = self.train_config.extract_batch_tokens
        progress = tqdm(total=len(prepared), desc="encoding training chunks", unit="group")
        start = 0
        while start < len(prepared):
            end, tokens = start, 0
            while end < len(prepared) and (end == start or tokens + sum(len(c) for c in prepared[end].chunks) <= budget):
                tokens += sum(len(c) for c in prepared[end].chunks)
                end += 1
            block = prepared[start:end]
            coarse, fine = self._forward_pooled(block, grad=False)
            row = 0
            for prep in block:
                n = len(prep.chunks)
                features.append(
                    (
                        coarse.slice_rows(row, row + n).to("cpu", torch.bfloat16),
                        fine.slice_rows(row, row + n).to("cpu", torch.bfloat16),
                    )
                )
                row += n
            progress.update(len(block))
            start = end
        progress.close()
        return features

    # -- training --------------------------------------------------------------------------------
    def _targets(self, items: list[_Prepared]) -> dict[str, torch.Tensor]:
        chunk_group, chunk_target, sentence_target, word_local, word_keep, fine_mask, weights = [], [], [], [], [], [], []
        for g, prep in enumerate(items):
            for c in range(len(prep.chunks)):
                chunk_group.append(g)
                chunk_target.append(prep.chunk_target[c])
                sentence_target.append(prep.sentence_target[c])
                word_local.append(prep.word_local[c])
                word_keep.append(prep.word_keep[c])
                fine_mask.append(float(prep.group.fine_labels))
                weights.append(prep.group.weight)
        dev = self.device
        return {
            "chunk": torch.as_tensor(np.asarray(chunk_target), dtype=torch.float32, device=dev),
            "group": torch.as_tensor(chunk_group, device=dev),
            "weight": torch.as_tensor(weights, dtype=torch.float32, device=dev),
            "fine": torch.as_tensor(fine_mask, dtype=torch.float32, device=dev),
            "sentence": torch.as_tensor(np.concatenate(sentence_target), device=dev),
            "local": torch.as_tensor(np.concatenate(word_local), device=dev),
            "keep": torch.as_tensor(np.concatenate(word_keep), device=dev),
        }

    def _loss(self, coarse_pooled: PooledStates, fine_pooled: PooledStates, t: dict[str, torch.Tensor]):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            coarse = self.model.coarse_heads(coarse_pooled)
            fine = self.model.fine_heads(fine_pooled)
        s_chunk = fine_pooled.sentence_chunk
        w_chunk = t["weight"]
        w_sentence = (t["fine"] * w_chunk)[s_chunk]
        g_sentence = t["group"][s_chunk]
        w_word = w_sentence[fine_pooled.word_sentence]
        parts: dict[str, torch.Tensor] = {}
        for name, scores, scale in (("coarse", coarse, 0.5), ("fine", fine, 1.0)):
            parts[f"{name}_chunk"] = scale * (
                _listwise(scores["chunk"], t["chunk"] * w_chunk, t["group"]) + 0.5 * _bce(scores["chunk"], t["chunk"], w_chunk)
            )
            sentence_list = _listwise(scores["sentence"], t["sentence"] * w_sentence, g_sentence)
            parts[f"{name}_sentence"] = scale * (sentence_list + _bce(scores["sentence"], t["sentence"], w_sentence))
        parts["local"] = _bce(fine["local"], t["local"], w_word, self.train_config.local_pos_weight)
        parts["keep"] = _bce(fine["keep"], t["keep"], w_word)
        loss = sum(parts.values())
        return loss, {k: float(v.detach()) for k, v in parts.items()}

    def _lr_scale(self, step: int, total: int) -> float:
        warm = max(1, int(self.train_config.warmup * total))
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return max(0.05, 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def prepare(self) -> list[_Prepared]:
        from tqdm.auto import tqdm

        logger.info("preparing %d training groups", len(self.groups))
        prepared = [
            prepare_group(i, g, self.tokenizer, self.template, self.config, self.distilled)
            for i, g in enumerate(tqdm(self.groups, desc="preparing groups", unit="group", leave=False))
        ]
        return [p for p in prepared if p.chunks]

    def train(
        self, features: list[tuple[PooledStates, PooledStates]] | None = None, prepared: list[_Prepared] | None = None
    ) -> HyCoScorer:
        """Train; with a frozen backbone, ``features`` (from :meth:`extract_features`) may be passed in."""
        from tqdm.auto import tqdm

        tc = self.train_config
        rng = random.Random(tc.seed)
        prepared = prepared if prepared is not None else self.prepare()
        frozen = self.config.lora_rank == 0
        started = time.perf_counter()
        if frozen and features is None:
            self.model.eval()
            features = self.extract_features(prepared)
        if features is not None and len(features) != len(prepared):
            raise ValueError(f"got features for {len(features)} groups but {len(prepared)} prepared groups")
        steps_per_epoch = math.ceil(len(prepared) / tc.groups_per_step)
        total = tc.max_steps or max(1, int(round(tc.epochs * steps_per_epoch)))
        base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.model.train()
        if self.model.embeddings is not None:
            self.model.embeddings.eval()
        if self.model.layers is not None:
            for layer in self.model.layers[: self.config.exit_layer]:
                layer.eval()
        order: list[int] = []
        progress = tqdm(total=total, initial=self.step, desc="training compressor", unit="step")
        running: dict[str, float] = {}
        params = self.model.trainable_parameters()
        while self.step < total:
            if not order:
                order = list(range(len(prepared)))
                rng.shuffle(order)
            batch = [order.pop() for _ in range(min(tc.groups_per_step, len(order)))]
            for group, base in zip(self.optimizer.param_groups, base_lrs):
                group["lr"] = base * self._lr_scale(self.step, total)
            items = [prepared[i] for i in batch]
            if frozen:
                assert features is not None  # extracted above when frozen
                coarse = PooledStates.cat([features[i][0] for i in batch]).to(self.device, torch.float32)
                fine = PooledStates.cat([features[i][1] for i in batch]).to(self.device, torch.float32)
            else:
                keys = [(i, c) for i in batch for c in range(len(prepared[i].chunks))]
                coarse, fine = self._forward_pooled(items, grad=True, keys=keys)
            loss, parts = self._loss(coarse, fine, self._targets(items))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {float(loss)} at step {self.step}; lower the learning rate")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.optimizer.step()
            self.step += 1
            for k, v in parts.items():
                running[k] = 0.95 * running.get(k, v) + 0.05 * v
            progress.update(1)
            if self.step % 10 == 0:
                progress.set_postfix(loss=f"{sum(running.values()):.3f}")
            if self.step % 50 == 0 or self.step == total:
                self.history.append({"step": self.step, **{k: round(v, 4) for k, v in running.items()}})
                logger.info("step %d/%d %s", self.step, total, " ".join(f"{k}={v:.3f}" for k, v in running.items()))
            if self.step % tc.checkpoint_every == 0:
                self.save()
            if tc.time_limit_s is not None and time.perf_counter() - started > tc.time_limit_s:
                logger.warning("time limit of %.0f s reached at step %d/%d; saving", tc.time_limit_s, self.step, total)
                break
        progress.close()
        self.config.training = {
            **self.config.training,
            "steps": self.step,
            "seconds": round(time.perf_counter() - started, 1),
            "groups": len(prepared),
        }
        self.save()
        self.model.eval()
        return self.model


def describe_groups(groups: list[TrainGroup]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.source] = counts.get(g.source, 0) + 1
    return counts


def save_features(path: str | Path, features: list[tuple[PooledStates, PooledStates]], key: str) -> Path:
    """Write extracted pooled states (all groups concatenated) as one safetensors file, atomically."""
    from hyco_rag.results import save_safetensors_atomic

    tensors: dict[str, torch.Tensor] = {}
    for view, index in (("coarse", 0), ("fine", 1)):
        items = [f[index] for f in features]
        merged = PooledStates.cat(items)
        for f in dataclasses_fields(PooledStates):
            tensors[f"{view}.{f.name}"] = getattr(merged, f.name).contiguous()
    tensors["rows"] = torch.as_tensor([f[0].cls.shape[0] for f in features], dtype=torch.long)
    return save_safetensors_atomic(tensors, path, {"key": key})


def load_features(path: str | Path, key: str) -> list[tuple[PooledStates, PooledStates]] | None:
    """Features saved by :func:`save_features` for the same ``key`` (else None)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        if (handle.metadata() or {}).get("key") != key:
            return None
    tensors = load_file(str(path))
    rows = tensors["rows"].tolist()
    views = []
    for view in ("coarse", "fine"):
        merged = PooledStates(**{f.name: tensors[f"{view}.{f.name}"] for f in dataclasses_fields(PooledStates)})
        parts, start = [], 0
        for n in rows:
            parts.append(merged.slice_rows(start, start + n))
            start += n
        views.append(parts)
    return list(zip(views[0], views[1]))


def feature_key(config: CompressorConfig, groups: list[TrainGroup]) -> str:
    """Hash of everything the frozen features depend on."""
    import hashlib

    digest = hashlib.sha256()
    from hyco_rag.compression.model import FEATURE_VERSION

    relevant = {
        k: getattr(config, k) for k in ("encoder", "max_length", "max_query_tokens", "chunk_overlap", "exit_layer", "attention")
    }
    relevant["feature_version"] = FEATURE_VERSION
    digest.update(json.dumps(relevant, sort_keys=True).encode())
    for group in groups:
        digest.update(group.query.encode())
        for passage in group.passages:
            digest.update(passage.text.encode())
    return digest.hexdigest()[:24]
