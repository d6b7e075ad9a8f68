"""Stage 2: train the parameter translator to mimic the collected PRAG LoRAs.

Loss per batch of passages (weights configurable, any may be 0)::

    L = w_mse * MSE_norm(A_gen, A_prag; B_gen, B_prag)
      + w_lm  * CE(answer tokens | generated deltas)             on the passage's QA sequences
      + w_kl  * KL(p_prag-LoRA || p_generated)                   at the same answer positions

* ``MSE_norm`` divides each target's squared error by the mean square of its collected
  factors, so the term is scale-free (DyPRAG's raw MSE needs a weight of 100 for values ~1e-3).
* LM and KL are taken only at answer positions, not over 3000 padded positions as DyPRAG's
  code does; the teacher is the frozen model with the passage's own PRAG LoRA.
* The translator's static delta starts at the mean collected LoRA, so the heads learn only
  what depends on the passage.

A held-out slice of the pairs is scored at the end (closed-book and with-context answer loss
with no delta, the PRAG LoRA, and the translator's delta), and saved in ``training.json``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.nn import functional as F

from hyco_rag.dyprag.config import DeltaConfig
from hyco_rag.dyprag.injection import DeltaInjector
from hyco_rag.dyprag.training.common import freeze, group_deltas, label_logits, row_mean
from hyco_rag.dyprag.training.data import SequenceBuilder, TrainingPassage, collate, pack_batches
from hyco_rag.dyprag.training.shards import load_pairs
from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig, TranslatorMismatchError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass
class TranslatorTrainConfig:
    """Stage-2 settings (defaults: the shipped CPU run)."""

    hidden_dim: int = field(default=32, metadata={"help": "translator trunk width p"})
    epochs: int = field(default=1, metadata={"help": "passes over the pairs"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    batch_passages: int = field(default=4, metadata={"help": "passages per optimiser step"})
    mse_weight: float = field(default=1.0, metadata={"help": "weight of the normalised MSE to PRAG factors"})
    lm_weight: float = field(default=1.0, metadata={"help": "weight of the answer LM loss with generated deltas"})
    kl_weight: float = field(default=1.0, metadata={"help": "weight of KL to the PRAG-LoRA model"})
    kinds: tuple[str, ...] = field(default=("closed", "context"), metadata={"help": "QA sequence kinds for LM/KL"})
    max_closed: int = field(default=3, metadata={"help": "closed-book QA sequences per passage and step"})
    max_context: int = field(default=1, metadata={"help": "QA-with-passage sequences per passage and step"})
    max_batch_tokens: int = field(default=2048, metadata={"help": "padded tokens per micro-batch"})
    val_passages: int = field(default=8, metadata={"help": "pairs held out for the final report"})
    init_static_from_pairs: bool = field(
        default=False,
        metadata={"help": "ignored: the translator has no static delta any more (kept so old training.json files still load)"},
    )
    seed: int = field(default=0, metadata={"help": "shuffling seed"})

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "epochs", "batch_passages", "max_batch_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("mse_weight", "lm_weight", "kl_weight", "weight_decay", "val_passages"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mse_weight + self.lm_weight + self.kl_weight == 0:
            raise ValueError("at least one of mse_weight, lm_weight, kl_weight must be > 0")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        self.kinds = tuple(self.kinds)
        if not set(self.kinds) <= {"closed", "context", "passage"} or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of ('closed', 'context', 'passage'), got {self.kinds}")


@dataclass
class _Pairs:
    passages: list[TrainingPassage]
    embeddings: torch.Tensor
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def select(self, index: list[int]) -> _Pairs:
        idx = torch.tensor(index, dtype=torch.long)
        return _Pairs(
            [self.passages[i] for i in index],
            self.embeddings.index_select(0, idx),
            {n: (a.index_select(0, idx), b.index_select(0, idx)) for n, (a, b) in self.factors.items()},
        )


def _merge(shards: list) -> _Pairs:
    names = list(shards[0].factors)
    return _Pairs(
        [p for s in shards for p in s.passages],
        torch.cat([s.embeddings for s in shards]),
        {n: (torch.cat([s.factors[n][0] for s in shards]), torch.cat([s.factors[n][1] for s in shards])) for n in names},
    )


def _normalised_mse(
    generated: dict[str, tuple[torch.Tensor, torch.Tensor]],
    target: dict[str, tuple[torch.Tensor, torch.Tensor]],
    norms: dict[str, tuple[float, float]],
) -> torch.Tensor:
    terms = []
    for name, (a, b) in generated.items():
        ta, tb = target[name]
        na, nb = norms[name]
        terms.append(F.mse_loss(a, ta) / na + F.mse_loss(b, tb) / nb)
    return torch.stack(terms).mean() / 2


def _sequences(builder, passages, config, rng) -> list:
    out = []
    for i, passage in enumerate(passages):
        qa = list(passage.qa)
        rng.shuffle(qa)
        shuffled = TrainingPassage(passage.id, passage.text, tuple(qa), passage.title)
        out.extend(
            builder.sequences(shuffled, i, kinds=config.kinds, max_closed=config.max_closed, max_context=config.max_context)
        )
    return out


def _answer_losses(model, injector, factors, sequences, scaling, pad_id, max_tokens, *, teacher=None):
    """Yield (student LabelLogits, teacher LabelLogits or None, batch) per micro-batch."""
    for chunk in pack_batches(sequences, max_tokens):
        batch = collate(chunk, pad_id)
        teacher_out = None
        if teacher is not None:
            with torch.no_grad(), group_deltas(injector, teacher, batch["slots"], scaling):
                teacher_out = label_logits(model, batch)
        if factors is None:
            student = label_logits(model, batch)
        else:
            with group_deltas(injector, factors, batch["slots"], scaling):
                student = label_logits(model, batch)
        yield student, teacher_out, batch


@torch.no_grad()
def evaluate_pairs(
    model, tokenizer, translator: ParameterTranslator, pairs: _Pairs, config: TranslatorTrainConfig, injector: DeltaInjector
) -> dict[str, dict[str, float]]:
    """Mean answer loss on held-out pairs for no delta / PRAG LoRA / translator delta, per kind."""
    builder = SequenceBuilder(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scaling = translator.config.delta_config.scaling
    sequences = [
        s
        for i, p in enumerate(pairs.passages)
        for s in builder.sequences(p, i, kinds=("closed", "context"), max_closed=None, max_context=2)
    ]
    generated = translator(pairs.embeddings.to(next(translator.parameters()).device))
    device = next(model.parameters()).device
    sources = {
        "none": None,
        "prag_lora": {n: (a.to(device), b.to(device)) for n, (a, b) in pairs.factors.items()},
        "translator": {n: (a.to(device), b.to(device)) for n, (a, b) in generated.items()},
    }
    # A mismatched control: each passage gets another passage's translated delta.
    if len(pairs.passages) > 1:
        perm = torch.roll(torch.arange(len(pairs.passages)), 1)
        sources["translator_shuffled"] = {
            n: (a[perm], b[perm])
            for n, (a, b) in cast("dict[str, tuple[torch.Tensor, torch.Tensor]]", sources["translator"]).items()
        }
    report: dict[str, dict[str, float]] = {}
    for label, factors in sources.items():
        sums = {"closed": 0.0, "context": 0.0}
        counts = {"closed": 0, "context": 0}
        for student, _, batch in _answer_losses(model, injector, factors, sequences, scaling, pad_id, config.max_batch_tokens):
            ce = F.cross_entropy(student.logits, student.targets, reduction="none")
            per_row = row_mean(ce, student.rows, batch["input_ids"].shape[0]).cpu()
            for row, kind in enumerate(batch["kinds"]):
                sums[kind] += float(per_row[row])
                counts[kind] += 1
        report[label] = {k: sums[k] / counts[k] for k in sums if counts[k]}
    return report


def train_translator(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs_dir: str | Path,
    output_dir: str | Path | None = None,
    config: TranslatorTrainConfig | None = None,
    *,
    progress: bool = True,
) -> ParameterTranslator:
    """Train a translator on the pairs in ``pairs_dir``; save it to ``output_dir`` if given."""
    from tqdm.auto import tqdm

    from hyco_rag.results import write_json_atomic

    config = config or TranslatorTrainConfig()
    freeze(model)
    manifest, shards = load_pairs(pairs_dir)
    delta_config = DeltaConfig.from_dict(dict(cast("dict[str, Any]", manifest["delta"])))
    translator_config = TranslatorConfig.for_model(model, delta_config, hidden_dim=config.hidden_dim)
    recorded = cast("dict[str, object]", manifest.get("base_model", {}))
    if recorded.get("targets") != translator_config.base_model["targets"]:
        raise TranslatorMismatchError(f"the pairs in {pairs_dir} were collected on another model ({recorded.get('name')})")
    translator = ParameterTranslator(translator_config)
    try:  # the pairs' model must be this model (same fingerprint)
        probe = ParameterTranslator(TranslatorConfig(**{**asdict(translator_config), "base_model": dict(recorded)}))
        probe.check_compatible(model, delta_config)
    except TranslatorMismatchError as error:
        raise TranslatorMismatchError(f"pairs in {pairs_dir} do not match this model: {error}") from error

    pairs = _merge(shards)
    n = len(pairs.passages)
    order = list(range(n))
    random.Random(config.seed).shuffle(order)
    n_val = min(config.val_passages, max(0, n - 1))
    val = pairs.select(order[:n_val]) if n_val else None
    train = pairs.select(order[n_val:])
    norms = {
        name: (float(a.pow(2).mean().clamp_min(1e-12)), float(b.pow(2).mean().clamp_min(1e-12)))
        for name, (a, b) in train.factors.items()
    }
    # No static mean-LoRA initialisation: the translator holds no passage-independent delta.
    translator.set_feature_statistics(train.embeddings)
    device = next(model.parameters()).device
    translator.to(device).train()
    injector = DeltaInjector(model, delta_config)
    builder = SequenceBuilder(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    optimizer = torch.optim.AdamW(translator.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(train.passages) // config.batch_passages)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, total_steps // 10)) * max(0.1, 1 - step / max(1, total_steps))
    )
    rng = random.Random(config.seed + 1)
    history: list[dict[str, float]] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    need_lm = config.lm_weight > 0 or config.kl_weight > 0
    bar = tqdm(total=total_steps, desc="translator", unit="step", disable=not progress)
    for epoch in range(config.epochs):
        index = list(range(len(train.passages)))
        rng.shuffle(index)
        for s in range(0, len(index), config.batch_passages):
            part = train.select(index[s : s + config.batch_passages])
            generated = translator(part.embeddings.to(device))
            losses: dict[str, torch.Tensor] = {}
            total = torch.zeros((), device=device)
            if config.mse_weight > 0:
                target = {nm: (a.to(device), b.to(device)) for nm, (a, b) in part.factors.items()}
                losses["mse"] = _normalised_mse(generated, target, norms)
                total = total + config.mse_weight * losses["mse"]
            if need_lm:
                sequences = _sequences(builder, part.passages, config, rng)
                teacher = (
                    {nm: (a.to(device), b.to(device)) for nm, (a, b) in part.factors.items()} if config.kl_weight > 0 else None
                )
                lm_terms, kl_terms, weights = [], [], []
                for student, teacher_out, batch in _answer_losses(
                    model, injector, generated, sequences, delta_config.scaling, pad_id, config.max_batch_tokens, teacher=teacher
                ):
                    ce = F.cross_entropy(student.logits, student.targets, reduction="none")
                    lm_terms.append(row_mean(ce, student.rows, batch["input_ids"].shape[0]).sum())
                    weights.append(batch["input_ids"].shape[0])
                    if teacher_out is not None:
                        log_q = F.log_softmax(student.logits, -1)
                        log_p = F.log_softmax(teacher_out.logits, -1)
                        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
                        kl_terms.append(row_mean(kl, student.rows, batch["input_ids"].shape[0]).sum())
                rows = max(1, sum(weights))
                losses["lm"] = torch.stack(lm_terms).sum() / rows
                if config.lm_weight > 0:
                    total = total + config.lm_weight * losses["lm"]
                if kl_terms:
                    losses["kl"] = torch.stack(kl_terms).sum() / rows
                    total = total + config.kl_weight * losses["kl"]
            optimizer.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(translator.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            record = {k: float(v.detach()) for k, v in losses.items()}
            record.update(total=float(total.detach()), epoch=epoch)
            history.append(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k != "epoch"})
            bar.update(1)
    bar.close()
    translator.eval()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    report: dict[str, object] = {
        "config": asdict(config),
        "pairs_dir": str(pairs_dir),
        "train_passages": len(train.passages),
        "val_passages": n_val,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "translator_parameters": translator.num_parameters(),
        "history": history,
    }
    if val is not None:
        report["validation"] = evaluate_pairs(model, tokenizer, translator, val, config, injector)
        logger.info("held-out answer loss: %s", report["validation"])
    translator.training_report = report  # type: ignore[attr-defined]
    if output_dir is not None:
        output_dir = Path(output_dir)
        translator.save_pretrained(output_dir)
        write_json_atomic(output_dir / "training.json", report)
    return translator
