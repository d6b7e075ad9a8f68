"""Train the hybrid adapter: the served LLM frozen, the three stages mixed, teacher KL cached.

Per optimiser step one stage is drawn (``stage_weights``, the paper mixes its stages the same
way instead of running them one after another), a batch of that stage is built, and the loss is

* paraphrase / completion: NLL of the target tokens;
* instruction: NLL of the answer plus ``kl_weight`` x KL(teacher || student) over the
  teacher's top-``teacher_top_k`` tokens at every answer position; the teacher is the same LLM
  reading the uncompressed passages (computed once, cached on disk).

Only the adapter gets gradients: the LLM's weights have ``requires_grad=False``, so backward
computes input gradients only (about one more forward, not two).  Logits are computed at the
target positions only (the 49k-row LM head is a fifth of SmolLM2's forward otherwise).

Resumable: every ``checkpoint_every`` steps the adapter, the optimiser state and the loss log
are written atomically under ``<output>/checkpoint``; a rerun with the same command continues
from there.  Randomness is derived from ``(seed, step)``, so a resumed run draws the batches an
uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hyco_rag.hybrid.adapter import HybridAdapter
from hyco_rag.hybrid.features import TokenStates, context_states, pad_states
from hyco_rag.hybrid.soft import soft_prompt_ids
from hyco_rag.hybrid.training.caches import TensorStore
from hyco_rag.hybrid.training.data import (
    COMPLETION_INSTRUCTION,
    PARAPHRASE_INSTRUCTION,
    STAGES,
    QAItem,
    keep_some_words,
    student_messages,
    teacher_messages,
)
from hyco_rag.prompts import SHORT_ANSWER_TEMPLATE, PromptTemplate, render_chat
from hyco_rag.results import save_safetensors_atomic, write_json_atomic

logger = logging.getLogger(__name__)


@dataclass
class HybridTrainingConfig:
    """What one ``hyco-rag train hybrid`` run does (recorded in its report)."""

    steps: int = 400
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    num_soft_tokens: int = 8
    width: int = 256
    heads: int = 4
    stage_weights: tuple[float, float, float] = (0.2, 0.2, 0.6)
    rate: float = 0.125
    kl_weight: float = 1.0
    teacher_top_k: int = 32
    paraphrase_tokens: int = 48
    completion_tokens: int = 24
    max_context_tokens: int = 1024
    checkpoint_every: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if len(self.stage_weights) != len(STAGES) or min(self.stage_weights) < 0 or sum(self.stage_weights) <= 0:
            raise ValueError(
                f"stage_weights must be {len(STAGES)} non-negative numbers ({', '.join(STAGES)}), got {self.stage_weights}"
            )
        if not 0 < self.rate <= 1:
            raise ValueError(f"rate must be in (0, 1], got {self.rate}")


@dataclass
class _Example:
    """One student sequence: prompt ids with soft placeholders, target ids, what the adapter reads."""

    prompt_ids: list[int]
    soft_start: int
    target_ids: list[int]
    context: torch.Tensor  # [Lc, H] fp16
    instruction: torch.Tensor  # [Li, H] fp16
    teacher: tuple[torch.Tensor, torch.Tensor] | None = None  # ([T, k] log-probs, [T, k] ids)


@dataclass
class TrainingLog:
    """Mean losses per stage over each window of ``checkpoint_every`` steps."""

    rows: list[dict[str, Any]] = field(default_factory=list)


class HybridTrainer:
    """Owns the frozen model, the adapter, the caches and the loop.

    Args:
        model / tokenizer: the served LLM (frozen here).
        items: instruction-stage questions (:func:`~hyco_rag.hybrid.training.data.qa_items`).
        compressor: the local view; ``compress(query, passages, target_tokens=, target_tokenizer=)``.
        output: folder of the trained adapter (and its checkpoint while training).
        cache_dir: token states and teacher log-probs (shared across runs of one model).
        template: the QA prompt (default: the two-shot short-answer template).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        items: Sequence[QAItem],
        compressor: Any,
        config: HybridTrainingConfig,
        *,
        output: str | Path,
        cache_dir: str | Path,
        template: PromptTemplate = SHORT_ANSWER_TEMPLATE,
    ) -> None:
        from hyco_rag.dyprag.translator import embedding_fingerprint

        if not items:
            raise ValueError("no training questions")
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.tokenizer = tokenizer
        self.items = list(items)
        self.compressor = compressor
        self.config = config
        self.template = template
        self.output = Path(output)
        fingerprint = hashlib.sha1(json.dumps(embedding_fingerprint(model)).encode()).hexdigest()[:10]
        root = Path(cache_dir) / f"{getattr(model.config, 'model_type', 'model')}-{model.config.hidden_size}-{fingerprint}"
        self.states = TensorStore(root / "states")
        self.teacher = TensorStore(root / "teacher")
        self.kept_path = root / f"kept-r{config.rate:g}-k{config.num_soft_tokens}.json"
        self.encoder = TokenStates(model, tokenizer, cache_size=0)
        self.eos_id = int(tokenizer.eos_token_id)
        self.placeholder = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.prefix_cache = True  # reuse the shared prompt prefix's KV (see _hidden)
        self._prefixes: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self._cache_argument = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        torch.manual_seed(config.seed)
        self.adapter = HybridAdapter.for_model(
            model, num_soft_tokens=config.num_soft_tokens, width=config.width, heads=config.heads
        )

    # ------------------------------------------------------------------ tokens

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def passages(self) -> list[str]:
        return list(dict.fromkeys(text for item in self.items for text in item.passages))

    # ------------------------------------------------------------------ caches

    def prepare(self) -> None:
        """Fill every cache: token states of passages and instructions, kept text, teacher."""
        texts = self.passages() + [item.question for item in self.items] + [PARAPHRASE_INSTRUCTION, COMPLETION_INSTRUCTION]
        self.states.fill(
            texts, lambda chunk: [{"states": s} for s in self.encoder.encode(chunk)], batch_size=8, desc="token states"
        )
        self._fill_kept()
        self.teacher.fill([item.id for item in self.items], self._teacher_entries, batch_size=4, desc="teacher log-probs")

    def _budget(self, item: QAItem) -> int:
        passage_tokens = sum(len(self.encode(t)) for t in item.passages)
        return round(self.config.rate * passage_tokens) - self.config.num_soft_tokens

    def _fill_kept(self) -> None:
        kept: dict[str, list[str]] = {}
        if self.kept_path.is_file():
            kept = json.loads(self.kept_path.read_text(encoding="utf-8"))
        missing = [item for item in self.items if item.id not in kept]
        for done, item in enumerate(tqdm(missing, desc="kept text", unit="question", disable=not missing)):
            budget = self._budget(item)
            if budget < 1:
                kept[item.id] = []
            else:
                result = self.compressor.compress(
                    item.question, item.passages, target_tokens=budget, target_tokenizer=self.tokenizer
                )
                kept[item.id] = [t for t in result.texts if t.strip()]
            if (done + 1) % 200 == 0:
                write_json_atomic(self.kept_path, kept)
        if missing:
            write_json_atomic(self.kept_path, kept)
        for item in self.items:
            item.kept = kept[item.id]

    def _answer_ids(self, item: QAItem) -> list[int]:
        return self.encode(item.answers[0].strip()) + [self.eos_id]

    @torch.inference_mode()
    def _teacher_entries(self, ids: list[str]) -> list[dict[str, torch.Tensor]]:
        by_id = {item.id: item for item in self.items}
        sequences, targets = [], []
        for key in ids:
            item = by_id[key]
            prompt = self.encode(render_chat(self.tokenizer, teacher_messages(item.question, item.passages, self.template)))
            target = self._answer_ids(item)
            sequences.append(prompt + target)
            targets.append(len(target))
        hidden, _ = self._hidden([torch.tensor(s) for s in sequences], [None] * len(sequences), [0] * len(sequences))
        out = []
        for row, (sequence, count) in enumerate(zip(sequences, targets)):
            positions = torch.arange(len(sequence) - count - 1, len(sequence) - 1)
            logprobs = torch.log_softmax(self.model.lm_head(hidden[row, positions]).float(), dim=-1)
            values, indices = logprobs.topk(self.config.teacher_top_k, dim=-1)
            out.append({"logprobs": values.to(torch.float16), "indices": indices.to(torch.int32)})
        return out

    def _states(self, text: str) -> torch.Tensor:
        return self.states.get(text)["states"]

    # ------------------------------------------------------------------ batches

    def _example(self, stage: str, rng: random.Random) -> _Example:
        item = rng.choice(self.items)
        k = self.config.num_soft_tokens
        if stage == "instruction":
            messages = student_messages(item.question, item.kept, self.template, qa=True)
            context = context_states([self._states(t) for t in item.passages], self.config.max_context_tokens)
            ids, start = soft_prompt_ids(render_chat(self.tokenizer, messages), self.encode, k, self.placeholder)
            entry = self.teacher.get(item.id)
            return _Example(
                ids,
                start,
                self._answer_ids(item),
                context,
                self._states(item.question),
                (entry["logprobs"], entry["indices"].long()),
            )
        passage = rng.choice(item.passages)
        states = self._states(passage)
        passage_ids = self.encode(passage)
        if stage == "paraphrase":
            messages = student_messages(PARAPHRASE_INSTRUCTION, [], self.template, qa=False)
            ids, start = soft_prompt_ids(render_chat(self.tokenizer, messages), self.encode, k, self.placeholder)
            target = passage_ids[: self.config.paraphrase_tokens]
            return _Example(ids, start, target, states[: self.config.max_context_tokens], self._states(PARAPHRASE_INSTRUCTION))
        # completion: the first part's soft tokens + some of its words; the target is what follows
        length = min(len(passage_ids), states.shape[0])
        if length < 2:  # nothing to continue: read it back instead
            return self._example("paraphrase", rng)
        cut = min(length - 1, max(1, int(length * rng.uniform(0.4, 0.7))))
        prefix_text = self.tokenizer.decode(passage_ids[:cut])
        kept = keep_some_words(prefix_text, 0.25, rng)
        messages = student_messages(COMPLETION_INSTRUCTION, [kept] if kept else [], self.template, qa=False)
        ids, start = soft_prompt_ids(render_chat(self.tokenizer, messages), self.encode, k, self.placeholder)
        target = passage_ids[cut : cut + self.config.completion_tokens]
        return _Example(ids, start, target, states[:cut], self._states(COMPLETION_INSTRUCTION))

    def _hidden(
        self, sequences: list[torch.Tensor], soft: list[torch.Tensor | None], starts: list[int]
    ) -> tuple[torch.Tensor, int]:
        """Last hidden states of right-padded sequences with soft tokens written at their
        starts, and the offset of their first column (``hidden[:, p - offset]`` is position p).

        When every row has the same ids before its soft tokens (one stage's prompt prefix: the
        system turn, the worked examples, ``Document [1]:``), that prefix runs once, without
        gradients, and is reused as a KV cache: nothing before the soft tokens depends on
        them, so this changes no value and skips half of the QA stage's tokens.
        """
        device = next(self.model.parameters()).device
        offset = min(starts) if self.prefix_cache and all(s is not None for s in soft) else 0
        prefix = tuple(int(t) for t in sequences[0][:offset])
        if offset and any(tuple(int(t) for t in s[:offset]) != prefix for s in sequences):
            offset, prefix = 0, ()
        tails = [s[offset:] for s in sequences]
        width = max(int(s.shape[0]) for s in tails)
        ids = torch.full((len(tails), width), self.placeholder, dtype=torch.long)
        mask = torch.zeros(len(tails), width, dtype=torch.long)
        for i, s in enumerate(tails):
            ids[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = 1
        ids, mask = ids.to(device), mask.to(device)
        embeds = self.model.get_input_embeddings()(ids)
        if any(s is not None for s in soft):
            embeds = embeds.clone()
            for i, (tokens, start) in enumerate(zip(soft, starts)):
                if tokens is not None:
                    embeds[i, start - offset : start - offset + tokens.shape[0]] = tokens.to(embeds.dtype)
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model
        kwargs: dict[str, Any] = {}
        if offset:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.config)
            for layer, (keys, values) in enumerate(self._prefix_states(prefix)):
                cache.update(keys.expand(len(tails), -1, -1, -1), values.expand(len(tails), -1, -1, -1), layer)
            mask = torch.cat([mask.new_ones(len(tails), offset), mask], dim=1)
            kwargs = {
                self._cache_argument: cache,
                "position_ids": torch.arange(offset, offset + width, device=device)[None].expand(len(tails), -1),
            }
        hidden = decoder(inputs_embeds=embeds, attention_mask=mask, use_cache=bool(offset), **kwargs).last_hidden_state
        return hidden, offset

    def _prefix_states(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer keys and values of a prompt prefix (computed once per prefix)."""
        cached = self._prefixes.get(prefix)
        if cached is None:
            device = next(self.model.parameters()).device
            decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model
            with torch.no_grad():
                cache = decoder(input_ids=torch.tensor([prefix], device=device), use_cache=True).past_key_values
            cached = [(layer.keys, layer.values) for layer in cache.layers]
            self._prefixes[prefix] = cached
        return cached

    def soft_tokens(self, examples: Sequence[_Example], *, branch: str | None = None) -> torch.Tensor:
        device = next(self.model.parameters()).device
        context, context_mask = pad_states([e.context for e in examples], device)
        instruction, instruction_mask = pad_states([e.instruction for e in examples], device)
        soft: torch.Tensor = self.adapter(context, context_mask, instruction, instruction_mask, branch=branch)
        return soft

    def losses(self, examples: Sequence[_Example], soft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean NLL of the targets and mean KL to the teacher (0 without teacher entries)."""
        sequences = [torch.tensor(e.prompt_ids + e.target_ids) for e in examples]
        hidden, offset = self._hidden(sequences, list(soft), [e.soft_start for e in examples])
        nll_terms, kl_terms = [], []
        for row, example in enumerate(examples):
            count = len(example.target_ids)
            end = len(example.prompt_ids) + count
            positions = torch.arange(end - count - 1 - offset, end - 1 - offset, device=hidden.device)
            logprobs = torch.log_softmax(self.model.lm_head(hidden[row, positions]).float(), dim=-1)
            target = torch.tensor(example.target_ids, device=hidden.device)
            nll_terms.append(-logprobs.gather(1, target[:, None]).mean())
            if example.teacher is not None:
                teacher_logprobs, teacher_ids = (t.to(hidden.device) for t in example.teacher)
                teacher = torch.softmax(teacher_logprobs.float(), dim=-1)  # renormalised over its top-k
                student = logprobs.gather(1, teacher_ids)
                kl_terms.append((teacher * (torch.log(teacher.clamp(min=1e-12)) - student)).sum(-1).mean())
        nll = torch.stack(nll_terms).mean()
        kl = torch.stack(kl_terms).mean() if kl_terms else torch.zeros((), device=hidden.device)
        return nll, kl

    # ------------------------------------------------------------------ the loop

    def _checkpoint_dir(self) -> Path:
        return self.output / "checkpoint"

    def _save_checkpoint(self, step: int, optimizer: torch.optim.Optimizer, log: TrainingLog) -> None:
        directory = self._checkpoint_dir()
        self.adapter.save_pretrained(directory / "adapter", dtype=torch.float32)
        state = optimizer.state_dict()
        tensors = {
            f"{index}.{name}": value.detach().cpu().contiguous()
            for index, values in state["state"].items()
            for name, value in values.items()
            if isinstance(value, torch.Tensor)
        }
        save_safetensors_atomic(tensors, directory / "optimizer.safetensors")
        write_json_atomic(directory / "state.json", {"step": step, "param_groups": state["param_groups"], "log": log.rows})

    def _resume(self, optimizer: torch.optim.Optimizer, log: TrainingLog) -> int:
        from safetensors.torch import load_file

        directory = self._checkpoint_dir()
        if not (directory / "state.json").is_file():
            return 0
        saved = json.loads((directory / "state.json").read_text(encoding="utf-8"))
        loaded = HybridAdapter.from_pretrained(directory / "adapter")
        self.adapter.load_state_dict(loaded.state_dict())
        tensors = load_file(str(directory / "optimizer.safetensors"))
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        log.rows = saved["log"]
        logger.info("resumed from step %d (%s)", saved["step"], directory)
        return int(saved["step"])

    def _learning_rate(self, step: int) -> float:
        config = self.config
        if step < config.warmup_steps:
            return config.learning_rate * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def train(self) -> TrainingLog:
        """Run (or resume) the loop to ``config.steps``; returns the loss log."""
        config = self.config
        self.adapter.train()
        optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        log = TrainingLog()
        step = self._resume(optimizer, log)
        window: dict[str, list[float]] = {}
        started = time.perf_counter()
        with tqdm(total=config.steps, initial=step, desc="train hybrid", unit="step") as bar:
            while step < config.steps:
                rng = random.Random(f"{config.seed}-{step}")
                torch.manual_seed(config.seed * 100_003 + step)
                stage = rng.choices(STAGES, weights=config.stage_weights)[0]
                examples = [self._example(stage, rng) for _ in range(config.batch_size)]
                for group in optimizer.param_groups:
                    group["lr"] = self._learning_rate(step)
                nll, kl = self.losses(examples, self.soft_tokens(examples))
                loss = nll + config.kl_weight * kl
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), 1.0)
                optimizer.step()
                window.setdefault(f"{stage}_nll", []).append(nll.item())
                if stage == "instruction":
                    window.setdefault("instruction_kl", []).append(kl.item())
                step += 1
                bar.update(1)
                bar.set_postfix(stage=stage[:5], nll=f"{nll.item():.2f}")
                if step % config.checkpoint_every == 0 or step == config.steps:
                    row = {"step": step, **{k: round(sum(v) / len(v), 4) for k, v in window.items()}}
                    row["seconds"] = round(time.perf_counter() - started, 1)
                    log.rows.append(row)
                    logger.info("step %d: %s", step, row)
                    window = {}
                    self._save_checkpoint(step, optimizer, log)
        self.adapter.eval()
        return log

    # ------------------------------------------------------------------ held-out check

    @torch.no_grad()
    def answer_nll(self, items: Sequence[QAItem], *, control: str | None = None) -> float:
        """Mean answer NLL over held-out ``items`` (their kept text and teacher must be cached
        or computable): ``control`` ``"zero_soft"`` (soft tokens zeroed), ``"shuffled_soft"``
        (the soft tokens of the previous question in the same chunk of 8) or ``None`` (the
        adapter's own)."""
        saved_items = self.items
        self.items = list(items)
        try:
            needed = [t for item in self.items for t in item.passages] + [item.question for item in self.items]
            self.states.fill(
                needed, lambda chunk: [{"states": s} for s in self.encoder.encode(chunk)], batch_size=8, desc="token states"
            )
            self._fill_kept()
            examples = []
            for item in self.items:
                messages = student_messages(item.question, item.kept, self.template, qa=True)
                ids, start = soft_prompt_ids(
                    render_chat(self.tokenizer, messages), self.encode, self.config.num_soft_tokens, self.placeholder
                )
                context = context_states([self._states(t) for t in item.passages], self.config.max_context_tokens)
                examples.append(_Example(ids, start, self._answer_ids(item), context, self._states(item.question)))
            total = 0.0
            for start in range(0, len(examples), 8):
                chunk = examples[start : start + 8]
                soft = self.soft_tokens(chunk)
                if control == "zero_soft":
                    soft = torch.zeros_like(soft)
                elif control == "shuffled_soft":
                    soft = soft.roll(1, dims=0) if len(chunk) > 1 else soft
                nll, _ = self.losses(chunk, soft)
                total += float(nll) * len(chunk)
            return total / len(examples)
        finally:
            self.items = saved_items

    def report(self, log: TrainingLog, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "adapter": asdict(self.adapter.config) | {"num_parameters": self.adapter.num_parameters},
            "questions": len(self.items),
            "passages": len(self.passages()),
            "sources": {
                source: sum(1 for i in self.items if i.source == source) for source in sorted({i.source for i in self.items})
            },
            "log": log.rows,
            **extra,
        }
