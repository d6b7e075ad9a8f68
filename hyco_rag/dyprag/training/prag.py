"""Stage 1 (PRAG doc-param collection): one LoRA per training passage, stored as pairs.

PRAG trains each document's LoRA separately (batch 1, one epoch over 5 augmented sequences).
Here ``group_size`` passages train *together*: their LoRAs are slots of one stacked tensor per
target, every batch row carries its passage's slot through the delta hooks (differentiable
path), and :class:`SlotAdam` steps each passage only on its own rows, so the result equals G
independent runs at a fraction of the Python and kernel-launch overhead.

Each passage's sequences (see :mod:`.data`) are shuffled and dealt into ``steps`` chunks per
epoch: one optimiser step per chunk, like PRAG's one step per sequence.
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from hyco_rag.dyprag.config import DEFAULT_TARGET_MODULES, DeltaConfig
from hyco_rag.dyprag.delta import LoRADelta
from hyco_rag.dyprag.encoding import PassageEncoder
from hyco_rag.dyprag.injection import DeltaInjector
from hyco_rag.dyprag.training.common import freeze, group_deltas, label_logits, row_mean, shared_lora_init
from hyco_rag.dyprag.training.data import (
    SEQUENCE_KINDS,
    SequenceBuilder,
    TrainingPassage,
    TrainingSequence,
    collate,
    pack_batches,
)
from hyco_rag.dyprag.training.optim import SlotAdam
from hyco_rag.dyprag.training.shards import MANIFEST, shard_name, shard_passage_ids, write_shard

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass
class PragConfig:
    """Stage-1 settings (defaults: the shipped CPU run)."""

    rank: int = field(default=2, metadata={"help": "LoRA rank per passage"})
    scaling: float = field(default=1.0, metadata={"help": "s in W x + s B A x"})
    target_modules: tuple[str, ...] | str = field(default=DEFAULT_TARGET_MODULES, metadata={"help": "as DeltaConfig"})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate of each passage's LoRA"})
    epochs: int = field(default=1, metadata={"help": "passes over each passage's sequences"})
    steps: int = field(default=3, metadata={"help": "optimiser steps per epoch (sequences dealt into chunks)"})
    kinds: tuple[str, ...] = field(default=SEQUENCE_KINDS, metadata={"help": "sequence kinds trained on"})
    max_closed: int = field(default=6, metadata={"help": "closed-book QA sequences per passage"})
    max_context: int = field(default=1, metadata={"help": "QA-with-passage sequences per passage"})
    max_passage_tokens: int = field(default=256, metadata={"help": "tokens of the passage-LM sequence"})
    group_size: int = field(default=8, metadata={"help": "passages trained together"})
    max_batch_tokens: int = field(default=2048, metadata={"help": "padded tokens per micro-batch"})
    init_seed: int = field(default=0, metadata={"help": "seed of the shared LoRA A initialisation"})
    seed: int = field(default=0, metadata={"help": "seed of sequence shuffling"})
    shard_size: int = field(default=64, metadata={"help": "passages per shard file"})
    measure: bool = field(default=True, metadata={"help": "closed-book answer loss before/after each LoRA"})

    def __post_init__(self) -> None:
        for name in ("epochs", "steps", "group_size", "max_batch_tokens", "shard_size", "max_passage_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.kinds or set(self.kinds) - set(SEQUENCE_KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {SEQUENCE_KINDS}, got {self.kinds}")
        if isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        self.kinds = tuple(self.kinds)
        _ = self.delta_config  # builds (and so validates) rank, scaling and targets

    @property
    def delta_config(self) -> DeltaConfig:
        return DeltaConfig(target_modules=self.target_modules, rank=self.rank, scaling=self.scaling)


def _loss_per_slot(model, injector, factors, batch, scaling, num_slots) -> torch.Tensor:
    """Mean token CE of each row, then mean over each slot's rows: ``[num_slots]``."""
    with group_deltas(injector, factors, batch["slots"], scaling):
        out = label_logits(model, batch)
    ce = F.cross_entropy(out.logits, out.targets, reduction="none")
    per_row = row_mean(ce, out.rows, batch["input_ids"].shape[0])
    slots = batch["slots"].to(per_row.device)
    sums = torch.zeros(num_slots, device=per_row.device).index_add(0, slots, per_row)
    counts = torch.zeros(num_slots, device=per_row.device).index_add(0, slots, torch.ones_like(per_row))
    return sums / counts.clamp_min(1)


@torch.no_grad()
def _closed_loss(model, injector, factors, sequences, scaling, num_slots, pad_id, max_tokens) -> torch.Tensor:
    totals = torch.zeros(num_slots)
    counts = torch.zeros(num_slots)
    for chunk in pack_batches(sequences, max_tokens):
        batch = collate(chunk, pad_id)
        loss = _loss_per_slot(model, injector, factors, batch, scaling, num_slots).cpu()
        present = torch.zeros(num_slots).index_add(0, batch["slots"], torch.ones(len(chunk)))
        totals += loss * present
        counts += present
    return totals / counts.clamp_min(1)


def train_group_loras(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    passages: Sequence[TrainingPassage],
    config: PragConfig,
    *,
    injector: DeltaInjector | None = None,
    builder: SequenceBuilder | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[dict[str, float]]]:
    """Train one LoRA per passage (all at once); returns ``name -> (A [G,r,in], B [G,out,r])``
    and per-passage stats."""
    freeze(model)
    injector = injector or DeltaInjector(model, config.delta_config)
    builder = builder or SequenceBuilder(tokenizer, max_passage_tokens=config.max_passage_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    g = len(passages)
    init = shared_lora_init(injector.target_shapes, config.rank, config.init_seed)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, (_, out_features) in injector.target_shapes.items():
        a = init[name].to(device).unsqueeze(0).repeat(g, 1, 1).requires_grad_(True)
        b = torch.zeros(g, out_features, config.rank, device=device, requires_grad=True)
        factors[name] = (a, b)
    optimizer = SlotAdam([t for pair in factors.values() for t in pair], lr=config.lr)
    # One generator per passage (seeded by its id): a passage trains the same alone or in a group.
    rngs = [random.Random(config.seed * 1_000_003 + zlib.crc32(p.id.encode())) for p in passages]
    per_passage = [
        builder.sequences(p, i, kinds=config.kinds, max_closed=config.max_closed, max_context=config.max_context, rng=rngs[i])
        for i, p in enumerate(passages)
    ]
    closed = [s for seqs in per_passage for s in seqs if s.kind == "closed"]
    stats: list[dict[str, float]] = [{} for _ in passages]
    if config.measure and closed:
        before = _closed_loss(model, injector, factors, closed, config.scaling, g, pad_id, config.max_batch_tokens)
    train_loss = torch.zeros(g)
    for _ in range(config.epochs):
        chunks: list[list[list[TrainingSequence]]] = [[[] for _ in range(config.steps)] for _ in passages]
        for i, seqs in enumerate(per_passage):
            order = list(seqs)
            rngs[i].shuffle(order)
            for k, seq in enumerate(order):
                chunks[i][k % config.steps].append(seq)
        for step in range(config.steps):
            rows = [seq for i in range(g) for seq in chunks[i][step]]
            if not rows:
                continue
            active = torch.zeros(g, dtype=torch.bool)
            active[[s.passage for s in rows]] = True
            step_loss = torch.zeros(g)
            # Each passage's loss is the mean over its rows of this step, across micro-batches.
            rows_per_slot = torch.zeros(g).index_add(0, torch.tensor([s.passage for s in rows]), torch.ones(len(rows)))
            for micro in pack_batches(rows, config.max_batch_tokens):
                batch = collate(micro, pad_id)
                per_slot = _loss_per_slot(model, injector, factors, batch, config.scaling, g)
                present = torch.zeros(g).index_add(0, batch["slots"], torch.ones(len(micro)))
                weight = (present / rows_per_slot.clamp_min(1)).to(per_slot.device)
                (per_slot * weight).sum().backward()
                step_loss += per_slot.detach().cpu() * weight.cpu()
            optimizer.step(active)
            optimizer.zero_grad()
            train_loss = step_loss
    if config.measure and closed:
        after = _closed_loss(model, injector, factors, closed, config.scaling, g, pad_id, config.max_batch_tokens)
        for i in range(g):
            stats[i].update(closed_loss_before=float(before[i]), closed_loss_after=float(after[i]))
    for i in range(g):
        stats[i]["last_step_loss"] = float(train_loss[i])
    return {name: (a.detach(), b.detach()) for name, (a, b) in factors.items()}, stats


def train_passage_lora(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    passage: str,
    qa_pairs: Sequence[tuple[str, str]] = (),
    config: PragConfig | None = None,
) -> LoRADelta:
    """PRAG at query time: train a LoRA on one passage and return it as a delta.

    With no ``qa_pairs`` only the passage-LM sequence is used (PRAG would generate QA pairs
    with the LLM; never pass the test question's gold answer here).
    """
    if not isinstance(passage, str) or not passage.strip():
        raise ValueError("cannot train a LoRA on an empty passage")
    config = config or PragConfig(measure=False)
    qa = tuple((q, (a,)) for q, a in qa_pairs)
    kinds = ("passage",) + (("closed", "context") if qa else ())
    config = PragConfig(
        **{**asdict(config), "kinds": tuple(k for k in config.kinds if k in kinds) or ("passage",), "measure": False}
    )
    factors, _ = train_group_loras(model, tokenizer, [TrainingPassage("query", passage, qa)], config)
    return LoRADelta({name: (a[0], b[0]) for name, (a, b) in factors.items()}, config.scaling)


def collect_prag_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    passages: Sequence[TrainingPassage],
    output_dir: str | Path,
    config: PragConfig | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Train a LoRA for every passage and write the (embedding, LoRA) pairs to ``output_dir``.

    Resumable: shards already on disk with the same passage ids are kept.
    """
    from tqdm.auto import tqdm

    from hyco_rag.dyprag.translator import model_identity
    from hyco_rag.results import write_json_atomic

    config = config or PragConfig()
    if not passages:
        raise ValueError("no training passages")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    freeze(model)
    injector = DeltaInjector(model, config.delta_config)
    builder = SequenceBuilder(tokenizer, max_passage_tokens=config.max_passage_tokens)
    encoder = PassageEncoder(model, tokenizer, cache_size=0)
    identity = model_identity(model, config.delta_config)
    manifest: dict[str, object] = {
        "format": "hyco-rag-prag-pairs",
        "config": asdict(config),
        "delta": config.delta_config.to_dict(),
        "base_model": identity,
        "embedding": {"kind": "mean-pooled last hidden state", "max_tokens": encoder.max_tokens},
        "shards": [],
    }
    shards: list[dict[str, object]] = []
    start_all = time.perf_counter()
    cpu_all = time.process_time()
    bar = tqdm(total=len(passages), desc="PRAG LoRAs", unit="passage", disable=not progress)
    for shard_index, start in enumerate(range(0, len(passages), config.shard_size)):
        shard_passages = list(passages[start : start + config.shard_size])
        path = output_dir / shard_name(shard_index)
        if shard_passage_ids(path) == [p.id for p in shard_passages]:
            logger.info("keeping existing %s", path.name)
            shards.append({"file": path.name, "count": len(shard_passages)})
            bar.update(len(shard_passages))
            continue
        all_factors: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []
        all_stats: list[dict[str, float]] = []
        for g in range(0, len(shard_passages), config.group_size):
            group = shard_passages[g : g + config.group_size]
            factors, stats = train_group_loras(model, tokenizer, group, config, injector=injector, builder=builder)
            all_factors.append(factors)
            all_stats.extend(stats)
            bar.update(len(group))
            done = start + g + len(group)
            logger.info(
                "PRAG LoRAs: %d/%d passages, %.0f s (closed-book answer loss %s)",
                done,
                len(passages),
                time.perf_counter() - start_all,
                ", ".join(
                    f"{s.get('closed_loss_before', float('nan')):.2f}->{s.get('closed_loss_after', float('nan')):.2f}"
                    for s in stats
                ),
            )
        merged = {
            name: (torch.cat([f[name][0] for f in all_factors]), torch.cat([f[name][1] for f in all_factors]))
            for name in all_factors[0]
        }
        embeddings = encoder.encode([p.text for p in shard_passages])
        write_shard(path, shard_passages, embeddings, merged, all_stats)
        shards.append({"file": path.name, "count": len(shard_passages)})
        manifest["shards"] = shards
        manifest["seconds"] = time.perf_counter() - start_all
        manifest["cpu_seconds"] = time.process_time() - cpu_all
        write_json_atomic(output_dir / MANIFEST, manifest)
    bar.close()
    manifest["shards"] = shards
    manifest["seconds"] = time.perf_counter() - start_all
    manifest["cpu_seconds"] = time.process_time() - cpu_all
    write_json_atomic(output_dir / MANIFEST, manifest)
    return output_dir
