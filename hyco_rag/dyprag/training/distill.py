"""Translator training by context distillation (replaces the PRAG-pair regression of stage 2).

* **teacher**: the frozen reader with the passage in its context.  The passage's raw tokens come
  first, then the serving closed-book prompt (system + worked turns + question), then the answer.
* **student**: the same reader *without* the passage, plus ``Delta(passage)`` from the
  translator, on the same closed-book prompt and answer.
  The only difference between the two inputs is the passage, so what the delta must supply is
  exactly what the passage supplied.

Loss on the answer tokens of each (passage, question):

    w_kl * KL(teacher top-k || student)  +  w_ce * CE(gold | own delta)
      + w_margin * relu(margin + CE(gold | own delta) - CE(gold | another passage's delta))

The last term is the passage-specificity term: the question's answer must be more likely under
its own passage's delta than under the delta of another passage in the batch.

CPU economy (all measured on the shared 2-core machine, one thread):

* one forward per passage gives both the passage feature and the teacher: the raw passage is
  encoded first (its final normed states are what :class:`~hyco_rag.dyprag.encoding.PassageEncoder`
  pools, bit for bit, since attention is causal), then the prompt continues from its KV cache;
  the teacher's top-k log-probs at the answer tokens are cached to disk (fp16), in shards,
  resumably;
* the student's prompt prefix (system + worked turns, identical for every question) is run once
  *without* delta and its KV cache reused for every batch; the delta then acts on the question
  and answer tokens only.  Serving applies the delta to the prefix too; the evaluation measures
  the serving path, so any cost of this shortcut shows in the reported figures.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from hyco_rag.dyprag.config import DeltaConfig
from hyco_rag.dyprag.delta import DeltaBatch
from hyco_rag.dyprag.injection import DeltaInjector
from hyco_rag.dyprag.training.common import freeze
from hyco_rag.dyprag.training.data import TrainingPassage
from hyco_rag.prompts import SHORT_ANSWER_TEMPLATE, PromptTemplate, build_prompt
from hyco_rag.results import atomic_output

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

_MARK = "\u2063QUESTION\u2063"


class TrainEvalOverlapError(ValueError):
    """A training passage appears in an evaluation set."""


def passage_key(text: str) -> str:
    """Whitespace- and case-insensitive fingerprint of a passage (what the leak check compares)."""
    return hashlib.sha1(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


def check_no_overlap(train_keys: Sequence[str] | set[str], eval_texts: Sequence[str], what: str = "evaluation set") -> None:
    """Raise :class:`TrainEvalOverlapError` if any evaluation passage is a training passage."""
    keys = set(train_keys)
    clash = [text for text in eval_texts if passage_key(text) in keys]
    if clash:
        raise TrainEvalOverlapError(
            f"{len(clash)} passages of the {what} were used to train the translator, e.g. {clash[0][:80]!r}; "
            "scores on them are contaminated"
        )


def load_squad_train(
    path: str | Path | None = None, limit: int | None = None, seed: int = 0, questions: int = 3
) -> list[TrainingPassage]:
    """SQuAD v1.1 *train* paragraphs (never dev, never the cs224n files), shuffled by ``seed``."""
    from hyco_rag.data.paths import data_file
    from hyco_rag.dyprag.training.data import SQUAD_V11_TRAIN

    path = Path(path) if path is not None else Path(SQUAD_V11_TRAIN)
    if "cs224n" in path.name or "dev" in path.name:
        raise TrainEvalOverlapError(f"{path} is an evaluation file (SQuAD v1.1 dev paragraphs); train on SQuAD v1.1 train")
    if not path.is_file():
        path = data_file(str(path))
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)["data"]
    passages = []
    for article in data:
        for k, paragraph in enumerate(article["paragraphs"]):
            qa = []
            for item in paragraph["qas"]:
                answers = tuple(dict.fromkeys(a["text"].strip() for a in item.get("answers", []) if a["text"].strip()))
                if answers and len(answers[0].split()) <= 6:
                    qa.append((item["question"].strip(), answers))
            if qa:
                passages.append(
                    TrainingPassage(
                        f"squad-train:{article['title']}:{k}", paragraph["context"], tuple(qa[:questions]), article["title"]
                    )
                )
    random.Random(seed).shuffle(passages)
    return passages[:limit] if limit else passages


def card_passages(count: int, seed: int = 0) -> list[TrainingPassage]:
    """Training cards of the synthetic-fact probe (disjoint from its evaluation cards)."""
    from hyco_rag.evaluation.synthetic import make_cards

    return [TrainingPassage(c.id, c.text, c.qa(), "card") for c in make_cards(count, "train", seed)]


# ------------------------------------------------------------------------------ prompt pieces


@dataclass
class PromptParts:
    """Token ids of the closed-book prompt split into the shared prefix and a question suffix."""

    prefix: list[int]
    tokenizer: Any
    template: PromptTemplate

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, template: PromptTemplate = SHORT_ANSWER_TEMPLATE) -> PromptParts:
        text = build_prompt(tokenizer, _MARK, (), template)
        head = text[: text.index(_MARK)].rstrip(" ")
        return cls(tokenizer(head, add_special_tokens=False)["input_ids"], tokenizer, template)

    def suffix(self, question: str, answer: str) -> tuple[list[int], int] | None:
        """``(suffix ids, index of the first answer token in the suffix)``, or None when the
        joint tokenization of the prompt does not start with the shared prefix."""
        tok = self.tokenizer
        prompt = tok(build_prompt(tok, question, (), self.template), add_special_tokens=False)["input_ids"]
        if prompt[: len(self.prefix)] != self.prefix:
            return None
        end = tok.eos_token or ""
        answer_ids = tok(answer.strip() + end, add_special_tokens=False)["input_ids"]
        rest = prompt[len(self.prefix) :]
        return rest + answer_ids, len(rest)


def _expand(cache: Any, rows: int) -> Any:
    grown = copy.deepcopy(cache)
    grown.batch_repeat_interleave(rows)
    return grown


# ------------------------------------------------------------------------------ caching


@dataclass
class DistillConfig:
    """Settings of the distillation run (defaults: the shipped CPU run)."""

    squad_passages: int = field(default=160, metadata={"help": "SQuAD v1.1 train paragraphs"})
    cards: int = field(default=128, metadata={"help": "synthetic training cards"})
    val_squad: int = field(default=24, metadata={"help": "held-out SQuAD train paragraphs for the report"})
    val_cards: int = field(default=24, metadata={"help": "held-out training-split cards for the report"})
    squad_questions: int = field(default=2, metadata={"help": "questions per SQuAD paragraph"})
    max_passage_tokens: int = field(default=160, metadata={"help": "passages are truncated to this many tokens"})
    top_k: int = field(default=20, metadata={"help": "teacher log-probs kept per answer token"})
    hidden_dim: int = field(default=128, metadata={"help": "translator trunk width p"})
    rank: int = field(default=2, metadata={"help": "LoRA rank per passage"})
    epochs: int = 1
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps (the schedule spans them)"})
    batch_passages: int = 4
    rows_per_passage: int = field(default=2, metadata={"help": "own-delta questions per passage per step"})
    lr: float = 2e-4  # 3e-3 diverged within 10 steps (the B heads are large outputs)
    weight_decay: float = 0.0
    w_kl: float = 1.0
    w_ce: float = 1.0
    w_margin: float = 1.0
    margin: float = 1.0
    shard_size: int = 32
    checkpoint_every: int = 10
    seed: int = 0
    squad_path: str | None = None


def _topk_teacher(model, hidden: torch.Tensor, targets: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    logits = model.get_output_embeddings()(hidden).float()
    logprobs = logits.log_softmax(-1)
    values, index = logprobs.topk(k, dim=-1)
    gold = logprobs.gather(-1, targets[:, None])[:, 0]
    return {"top_index": index.int(), "top_logprob": values.half(), "gold_logprob": gold}


@torch.no_grad()
def cache_passage(
    model, tokenizer, parts: PromptParts, passage: TrainingPassage, config: DistillConfig, rng: random.Random
) -> dict[str, Any] | None:
    """Feature + teacher targets of one passage (None if no question fits)."""
    device = next(model.parameters()).device
    ids = tokenizer(passage.text, add_special_tokens=False)["input_ids"][: config.max_passage_tokens]
    if not ids:
        return None
    shown = tokenizer.decode(ids)
    qa = [(q, a[0]) for q, a in passage.qa if a[0].lower() in shown.lower()]
    if passage.title == "card":
        rng.shuffle(qa)
        qa = qa[:4]
    else:
        qa = qa[: config.squad_questions]
    candidates = [(q, a, parts.suffix(q, a)) for q, a in qa]
    rows = [(q, a, s) for q, a, s in candidates if s is not None]
    if not rows:
        return None
    decoder = model.get_decoder()
    out = decoder(input_ids=torch.tensor([ids + parts.prefix], device=device), use_cache=True)
    feature = out.last_hidden_state[0, : len(ids)].float().mean(0).cpu()
    cache = out.past_key_values
    width = max(len(s[0]) for _, _, s in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), len(ids) + len(parts.prefix) + width, dtype=torch.long)
    mask[:, : len(ids) + len(parts.prefix)] = 1
    for r, (_, _, (suffix, _)) in enumerate(rows):
        batch[r, : len(suffix)] = torch.tensor(suffix)
        mask[r, len(ids) + len(parts.prefix) : len(ids) + len(parts.prefix) + len(suffix)] = 1
    hidden = decoder(
        input_ids=batch.to(device), attention_mask=mask.to(device), past_key_values=_expand(cache, len(rows))
    ).last_hidden_state
    questions = []
    for r, (q, a, (suffix, start)) in enumerate(rows):
        # position p predicts token p + 1: answer tokens suffix[start:], predicted from start - 1 ...
        positions = torch.arange(start - 1, len(suffix) - 1)
        targets = torch.tensor(suffix[start:])
        teacher = _topk_teacher(model, hidden[r, positions], targets.to(device), config.top_k)
        questions.append(
            {"question": q, "answer": a, "suffix": suffix, "start": start, **{k: v.cpu() for k, v in teacher.items()}}
        )
    return {
        "id": passage.id,
        "text": shown,
        "kind": "card" if passage.title == "card" else "squad",
        "feature": feature,
        "questions": questions,
    }


def build_cache(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    passages: Sequence[TrainingPassage],
    directory: str | Path,
    config: DistillConfig,
) -> list[dict[str, Any]]:
    """Cache every passage once (shards of ``shard_size``; finished shards are kept on rerun)."""
    from tqdm.auto import tqdm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    freeze(model)
    parts = PromptParts.build(tokenizer)
    records: list[dict[str, Any]] = []
    shards = [passages[i : i + config.shard_size] for i in range(0, len(passages), config.shard_size)]
    with tqdm(total=len(passages), desc="cache passages", unit="p") as bar:
        for s, shard in enumerate(shards):
            path = directory / f"cache-{s:05d}.pt"
            ids = [p.id for p in shard]
            if path.exists():
                stored = torch.load(path, weights_only=True)
                if stored["ids"] == ids:
                    records.extend(stored["records"])
                    bar.update(len(shard))
                    continue
            rng = random.Random(f"{config.seed}-{s}")
            done = []
            for passage in shard:
                record = cache_passage(model, tokenizer, parts, passage, config, rng)
                if record is not None:
                    done.append(record)
                bar.update(1)
            with atomic_output(path) as tmp:
                torch.save({"ids": ids, "records": done}, tmp)
            records.extend(done)
    return records


# ------------------------------------------------------------------------------ student


def _student_batch(rows: list[tuple[list[int], int]], prefix_len: int, pad: int) -> dict[str, torch.Tensor]:
    width = max(len(s) for s, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), prefix_len + width, dtype=torch.long)
    mask[:, :prefix_len] = 1
    for r, (suffix, _) in enumerate(rows):
        ids[r, : len(suffix)] = torch.tensor(suffix)
        mask[r, prefix_len : prefix_len + len(suffix)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def student_logprobs(model, prefix_cache, prefix_len: int, rows: list[tuple[list[int], int]], pad: int) -> list[torch.Tensor]:
    """Per row: log-softmax ``[answer tokens, vocab]`` at the answer positions (deltas as applied)."""
    device = next(model.parameters()).device
    batch = _student_batch(rows, prefix_len, pad)
    hidden = model.get_decoder()(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        past_key_values=_expand(prefix_cache, len(rows)),
    ).last_hidden_state
    select = [hidden[r, start - 1 : len(suffix) - 1] for r, (suffix, start) in enumerate(rows)]
    logits = model.get_output_embeddings()(torch.cat(select)).float().log_softmax(-1)
    return list(logits.split([len(s) - st for s, st in rows]))


def _row_losses(logprobs: torch.Tensor, question: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE on the gold answer tokens, KL(teacher top-k || student)) of one row."""
    device = logprobs.device
    targets = torch.tensor(question["suffix"][question["start"] :], device=device)
    ce = -logprobs.gather(-1, targets[:, None]).mean()
    index = question["top_index"].long().to(device)
    teacher = question["top_logprob"].float().to(device)
    teacher = teacher - teacher.logsumexp(-1, keepdim=True)  # renormalised over the top k
    kl = (teacher.exp() * (teacher - logprobs.gather(-1, index))).sum(-1).mean()
    return ce, kl


def _apply(injector: DeltaInjector, factors, slots: list[int], scaling: float):
    device = next(iter(factors.values()))[0].device
    count = next(iter(factors.values()))[0].shape[0]
    scale = torch.full((count,), float(scaling), device=device)
    return injector.apply(DeltaBatch(dict(factors), scale, torch.tensor(slots, device=device)))


@torch.no_grad()
def evaluate_records(
    model, tokenizer, translator, records: Sequence[dict[str, Any]], delta_config: DeltaConfig
) -> dict[str, float]:
    """Mean gold-answer CE (nats/token) on ``records``: teacher, no delta, own delta, another passage's delta."""
    injector = DeltaInjector(model, delta_config)
    parts = PromptParts.build(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prefix_cache = model.get_decoder()(
        input_ids=torch.tensor([parts.prefix], device=next(model.parameters()).device), use_cache=True
    ).past_key_values
    feats = torch.stack([r["feature"] for r in records])
    factors = translator(feats.to(next(translator.parameters()).device))
    sums = {"teacher": 0.0, "none": 0.0, "own": 0.0, "shuffled": 0.0}
    count = 0
    n = len(records)
    for i, record in enumerate(records):
        rows = [(q["suffix"], q["start"]) for q in record["questions"]]
        none = student_logprobs(model, prefix_cache, len(parts.prefix), rows, pad)
        with _apply(injector, factors, [i] * len(rows), delta_config.scaling):
            own = student_logprobs(model, prefix_cache, len(parts.prefix), rows, pad)
        with _apply(injector, factors, [(i + 1) % n] * len(rows), delta_config.scaling):
            other = student_logprobs(model, prefix_cache, len(parts.prefix), rows, pad)
        for q, a, b, c in zip(record["questions"], none, own, other):
            sums["teacher"] += float(-q["gold_logprob"].mean())
            sums["none"] += float(_row_losses(a, q)[0])
            sums["own"] += float(_row_losses(b, q)[0])
            sums["shuffled"] += float(_row_losses(c, q)[0])
            count += 1
    return {key: value / max(1, count) for key, value in sums.items()} | {"questions": count, "passages": n}


def train_distilled(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[dict[str, Any]],
    config: DistillConfig,
    output: str | Path,
    *,
    val_records: Sequence[dict[str, Any]] = (),
) -> tuple[Any, dict[str, Any]]:
    """Train a translator on cached ``records``; checkpoints in ``output`` (resumable)."""
    from tqdm.auto import tqdm

    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    freeze(model)
    device = next(model.parameters()).device
    delta_config = DeltaConfig(rank=config.rank)
    translator = ParameterTranslator(TranslatorConfig.for_model(model, delta_config, hidden_dim=config.hidden_dim)).to(device)
    translator.set_feature_statistics(torch.stack([r["feature"] for r in records]))
    injector = DeltaInjector(model, delta_config)
    parts = PromptParts.build(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        prefix_cache = model.get_decoder()(input_ids=torch.tensor([parts.prefix], device=device), use_cache=True).past_key_values
    optimizer = torch.optim.AdamW(translator.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(records) // config.batch_passages)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    warm = max(1, total // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, total)))))
    )
    step, history = 0, []
    checkpoint = output / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        translator.load_state_dict(state["translator"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, history = state["step"], state["history"]
        logger.info("resumed at step %d / %d", step, total)
    translator.train()
    started = time.process_time()
    with tqdm(total=total, initial=step, desc="distill", unit="step") as bar:
        while step < total:
            epoch, index = divmod(step, steps_per_epoch)
            order = list(range(len(records)))
            random.Random(config.seed * 7919 + epoch).shuffle(order)
            chosen = [records[i] for i in order[index * config.batch_passages : (index + 1) * config.batch_passages]]
            rng = random.Random(f"{config.seed}-{step}")
            feats = torch.stack([r["feature"] for r in chosen]).to(device)
            factors = translator(feats)
            own_rows, own_q, slots = [], [], []
            for p, record in enumerate(chosen):
                qs = list(record["questions"])
                rng.shuffle(qs)
                for q in qs[: config.rows_per_passage]:
                    own_rows.append((q["suffix"], q["start"]))
                    own_q.append(q)
                    slots.append(p)
            # Shuffled rows: the first question of every passage under the next passage's delta.
            g = len(chosen)
            first: dict[int, int] = {}
            for r, p in enumerate(slots):
                first.setdefault(p, r)
            shuf_rows = [own_rows[first[p]] for p in range(g)] if g > 1 else []
            shuf_slots = [(p + 1) % g for p in range(g)] if g > 1 else []
            with _apply(injector, factors, slots + shuf_slots, delta_config.scaling):
                logprobs = student_logprobs(model, prefix_cache, len(parts.prefix), own_rows + shuf_rows, pad)
            ce_rows, kl_rows = zip(*(_row_losses(lp, q) for lp, q in zip(logprobs, own_q)))
            ce, kl = torch.stack(ce_rows).mean(), torch.stack(kl_rows).mean()
            margin = torch.zeros((), device=device)
            if shuf_rows:
                shuf_ce = torch.stack([_row_losses(lp, own_q[first[p]])[0] for p, lp in zip(range(g), logprobs[len(own_rows) :])])
                own_first = torch.stack([ce_rows[first[p]] for p in range(g)])
                margin = F.relu(config.margin + own_first - shuf_ce).mean()
            loss = config.w_kl * kl + config.w_ce * ce + config.w_margin * margin
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(translator.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            history.append({"step": step, "loss": loss.item(), "ce": ce.item(), "kl": kl.item(), "margin": margin.item()})
            bar.set_postfix(ce=f"{ce.item():.2f}", kl=f"{kl.item():.2f}", margin=f"{margin.item():.2f}")
            bar.update(1)
            if step % config.checkpoint_every == 0 or step == total:
                with atomic_output(checkpoint) as tmp:
                    torch.save(
                        {
                            "translator": translator.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "step": step,
                            "history": history,
                        },
                        tmp,
                    )
    translator.eval()
    report: dict[str, Any] = {
        "config": asdict(config),
        "steps": total,
        "train_passages": {
            "squad": sum(r["kind"] == "squad" for r in records),
            "cards": sum(r["kind"] == "card" for r in records),
        },
        "train_questions": sum(len(r["questions"]) for r in records),
        "cpu_seconds_this_process": round(time.process_time() - started, 1),
        "parameters": translator.num_parameters(),
        "history_first_last": [history[:5], history[-5:]],
        "loss_curve_every_10": [h for h in history if h["step"] % 10 == 0],
    }
    for kind in ("squad", "card"):
        subset = [r for r in val_records if r["kind"] == kind]
        if subset:
            report[f"heldout_{kind}_answer_ce"] = evaluate_records(model, tokenizer, translator, subset, delta_config)
    return translator, report
