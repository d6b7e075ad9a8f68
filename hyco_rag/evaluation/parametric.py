"""Parametric-RAG evaluation: DyPRAG / PRAG deltas with the controls that tell knowledge from format.

Every method that adds something per passage is reported beside

* ``format_only``: the translator's delta for the *average* training passage (its input
  standardisation mean), i.e. what a delta does when it carries nothing of this passage;
* ``*_shuffled``: the delta of *another* question's passage (for ``combine`` the question's own
  passage stays in the prompt);

with the same reader prompt for every mode, EM / F1 / answer-contained, and paired bootstrap
95% intervals on own-minus-shuffled.  Rows carry ``section``, ``setting``, ``mode``, ``n``,
``em``, ``f1``, ``contains`` (and ``mc_accuracy`` in the synthetic section).

Deltas are applied per row with :class:`~hyco_rag.dyprag.injection.DeltaInjector` around
:meth:`hyco_rag.generation.ChatGenerator.generate_prompts` (or its ``deltas=`` keyword once it
exists); log-likelihood scoring runs the model forward under the same injector, autograd off.
Nothing here uses the serving runtime.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hyco_rag.dyprag.delta import LoRADelta
from hyco_rag.dyprag.injection import DeltaInjector
from hyco_rag.metrics import answer_in_text, best_exact_match, best_f1
from hyco_rag.prompts import SHORT_ANSWER_TEMPLATE, PromptTemplate, build_prompt

if TYPE_CHECKING:
    from hyco_rag.dyprag.translator import ParameterTranslator
    from hyco_rag.generation import ChatGenerator, GenerationConfig

logger = logging.getLogger(__name__)

MODES = ("none", "rag", "format_only", "dyprag", "dyprag_shuffled", "combine", "combine_shuffled", "prag", "prag_shuffled")
COMBINE_RULES = ("mean", "sum", "concat")
GPU_TARGET_MS = 2.0


# ------------------------------------------------------------------------------ statistics


def bootstrap_diff(a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` (paired, per question) with a percentile bootstrap 95% interval."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples must have equal, non-zero length (got {len(a)} and {len(b)})")
    diffs = torch.tensor([x - y for x, y in zip(a, b)], dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, len(diffs), (resamples, len(diffs)), generator=generator)
    means = diffs[index].mean(1).sort().values
    return {
        "diff": float(diffs.mean()),
        "ci95_low": float(means[int(0.025 * resamples)]),
        "ci95_high": float(means[min(resamples - 1, int(0.975 * resamples))]),
        "n": len(diffs),
    }


def derangement(keys: Sequence[str], seed: int = 0) -> list[int]:
    """For every item ``i`` another item ``j`` with ``keys[j] != keys[i]`` (its shuffled partner)."""
    n = len(keys)
    if n < 2 or len(set(keys)) < 2:
        raise ValueError("a shuffled control needs at least two different passages")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partner = [0] * n
    for k, i in enumerate(order):
        step = 1
        while keys[order[(k + step) % n]] == keys[i]:
            step += 1
        partner[i] = order[(k + step) % n]
    return partner


# ------------------------------------------------------------------------------ reader with deltas


class DeltaReader:
    """The served reader: greedy answers and candidate log-likelihoods, each row under its own delta."""

    def __init__(
        self, generator: ChatGenerator, config: GenerationConfig, template: PromptTemplate = SHORT_ANSWER_TEMPLATE
    ) -> None:
        self.generator = generator
        self.model = generator.model
        self.tokenizer = generator.tokenizer
        self.config = config
        self.template = template
        self._injector: DeltaInjector | None = None
        self._native = "deltas" in inspect.signature(generator.generate_prompts).parameters

    def injector(self, delta_config: Any) -> DeltaInjector:
        if self._injector is None or self._injector.config != delta_config:
            self._injector = DeltaInjector(self.model, delta_config)
        return self._injector

    def prompt(self, question: str, documents: Sequence[str] = ()) -> str:
        return build_prompt(self.tokenizer, question, documents, self.template)

    def generate(self, prompts: Sequence[str], deltas: Sequence[LoRADelta | None], delta_config: Any = None) -> list[Any]:
        """Greedy generations, row ``i`` under ``deltas[i]`` (None: the plain model)."""
        out: list[Any] = []
        size = self.config.batch_size
        for start in range(0, len(prompts), size):
            chunk, chunk_deltas = list(prompts[start : start + size]), list(deltas[start : start + size])
            if all(d is None for d in chunk_deltas):
                out.extend(self.generator.generate_prompts(chunk, self.config))
            elif self._native:
                out.extend(self.generator.generate_prompts(chunk, self.config, deltas=chunk_deltas))
            else:
                with self.injector(delta_config).apply(chunk_deltas):
                    out.extend(self.generator.generate_prompts(chunk, self.config))
        return out

    @torch.no_grad()
    def candidate_logprobs(
        self, prompt: str, candidates: Sequence[str], delta: LoRADelta | None, delta_config: Any = None
    ) -> list[float]:
        """Mean per-token log-probability of each candidate answer (+ end of turn) after ``prompt``."""
        import copy

        tok = self.tokenizer
        device = next(self.model.parameters()).device
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        end = tok.eos_token or ""
        cands = [tok(c.strip() + end, add_special_tokens=False)["input_ids"] for c in candidates]
        width = max(map(len, cands))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(cands), width), pad, dtype=torch.long)
        mask = torch.zeros(len(cands), len(prompt_ids) + width, dtype=torch.long)
        mask[:, : len(prompt_ids)] = 1
        for r, c in enumerate(cands):
            ids[r, : len(c)] = torch.tensor(c)
            mask[r, len(prompt_ids) : len(prompt_ids) + len(c)] = 1
        context = self.injector(delta_config).apply(delta) if delta is not None else _null()
        with context:
            first = self.model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=True, logits_to_keep=1)
            cache = copy.deepcopy(first.past_key_values)
            cache.batch_repeat_interleave(len(cands))
            rest = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache)
        first_lp = first.logits[0, -1].float().log_softmax(-1)
        rest_lp = rest.logits.float().log_softmax(-1)
        scores = []
        for r, c in enumerate(cands):
            total = float(first_lp[c[0]])
            for k in range(1, len(c)):
                total += float(rest_lp[r, k - 1, c[k]])
            scores.append(total / len(c))
        return scores


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# ------------------------------------------------------------------------------ deltas


class DeltaSource:
    """Per-passage deltas from a translator (embeddings cached by text) and their combinations."""

    def __init__(self, translator: ParameterTranslator, encoder: Any) -> None:
        self.translator = translator
        self.encoder = encoder
        self._cache: dict[str, LoRADelta] = {}
        self.encode_seconds: list[float] = []
        self.translate_seconds: list[float] = []

    @property
    def delta_config(self) -> Any:
        return self.translator.config.delta_config

    def passage(self, text: str) -> LoRADelta:
        key = hashlib.sha1(text.encode()).hexdigest()
        if key not in self._cache:
            begin = time.perf_counter()
            embedding = self.encoder.encode([text])
            middle = time.perf_counter()
            self._cache[key] = self.translator.translate(embedding)[0]
            self.encode_seconds.append(middle - begin)
            self.translate_seconds.append(time.perf_counter() - middle)
        return self._cache[key]

    def request(self, texts: Sequence[str], rule: str = "sum") -> LoRADelta:
        """One delta for several passages: exact ``mean`` or ``sum`` of their deltas, or the
        delta of their ``concat``enated text."""
        if rule not in COMBINE_RULES:
            raise ValueError(f"combine rule must be one of {COMBINE_RULES}, got {rule!r}")
        if rule == "concat" or len(texts) == 1:
            return self.passage("\n\n".join(texts))
        return LoRADelta.combine([self.passage(t) for t in texts], rule)

    def format_only(self) -> LoRADelta:
        """The delta of the average training passage (the passage-independent control)."""
        return self.translator.translate(self.translator.mean_embedding())[0]


# ------------------------------------------------------------------------------ QA rows


def qa_row(
    section: str, setting: str, mode: str, predictions: Sequence[str], golds: Sequence[Sequence[str]], **extra: Any
) -> dict[str, Any]:
    em = [best_exact_match(p, g) for p, g in zip(predictions, golds)]
    f1 = [best_f1(p, g) for p, g in zip(predictions, golds)]
    contains = [float(answer_in_text(p, g)) for p, g in zip(predictions, golds)]
    row = {
        "section": section,
        "setting": setting,
        "mode": mode,
        "n": len(predictions),
        "em": 100 * statistics.fmean(em) if em else None,
        "f1": 100 * statistics.fmean(f1) if f1 else None,
        "contains": 100 * statistics.fmean(contains) if contains else None,
        "mean_answer_words": statistics.fmean(len(p.split()) for p in predictions) if predictions else None,
        **extra,
    }
    row["_per_question"] = {"em": em, "f1": f1, "contains": contains}
    return row


def differences(
    rows: Sequence[dict[str, Any]], pairs: Sequence[tuple[str, str]], metrics: Sequence[str], seed: int = 0
) -> list[dict[str, Any]]:
    """Bootstrap own-minus-control for every ``(mode, control)`` pair present in the same section/setting,
    on the questions both rows scored (the first ``min(n_a, n_b)``: question samples are prefix-stable)."""
    out = []
    index = {(r["section"], r["setting"], r["mode"], r.get("combine_rule"), r.get("prompt")): r for r in rows}
    for (section, setting, mode, rule, prompt), row in index.items():
        for own, control in pairs:
            if mode != own:
                continue
            other = index.get((section, setting, control, rule, prompt))
            if other is None:
                continue
            for metric in metrics:
                a, b = row["_per_question"].get(metric), other["_per_question"].get(metric)
                if not a or not b:
                    continue
                # Rows of different sizes share their first questions (the samples are prefix-stable).
                a, b = a[: min(len(a), len(b))], b[: min(len(a), len(b))]
                stat = bootstrap_diff([100 * x for x in a], [100 * x for x in b], seed=seed)
                out.append(
                    {
                        "section": section,
                        "setting": setting,
                        "a": own,
                        "b": control,
                        "combine_rule": rule,
                        "prompt": prompt,
                        "metric": metric,
                        **stat,
                    }
                )
    return out


def strip_private(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


# ------------------------------------------------------------------------------ leak check


def training_keys(translator_dir: str | Path | None) -> set[str] | None:
    """Fingerprints of the translator's training passages (``training_passages.txt``), if recorded."""
    from hyco_rag.dyprag.translator import DEFAULT_TRANSLATOR_DIR

    path = Path(translator_dir or DEFAULT_TRANSLATOR_DIR) / "training_passages.txt"
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


# ------------------------------------------------------------------------------ SQuAD sections


@dataclass
class SquadItem:
    id: str
    question: str
    answers: list[str]
    gold: str
    passages: list[str]  # gold first, then same-article distractors


def squad_items(limit: int, seed: int = 0, distractors: int = 2) -> list[SquadItem]:
    """``limit`` SQuAD v1.1 dev questions sampled across all articles (seeded), gold + distractors."""
    from hyco_rag.data import load_squad

    examples = load_squad(num_distractors=distractors, seed=seed)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)  # prefix-stable: the first k of a larger run are the k of a smaller one
    chosen = [examples[i] for i in order[:limit]]
    items = []
    for ex in chosen:
        gold = ex.passages[ex.gold[0]].text
        others = [p.text for i, p in enumerate(ex.passages) if i != ex.gold[0]]
        items.append(SquadItem(ex.id, ex.question, list(ex.answers), gold, [gold, *others]))
    return items


def run_squad(
    reader: DeltaReader,
    source: DeltaSource,
    items: Sequence[SquadItem],
    modes: Sequence[str],
    *,
    setting: str = "gold",
    rule: str = "sum",
    prompt_name: str = "short",
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per mode for ``items``; ``setting`` "gold" (the gold passage) or "top3" (gold + 2 distractors)."""
    from tqdm.auto import tqdm

    docs = [[it.gold] if setting == "gold" else list(it.passages) for it in items]
    partner = derangement([it.gold for it in items], seed)
    golds = [it.answers for it in items]
    rows = []
    for mode in modes:
        begin = time.perf_counter()
        with_context = mode in ("rag", "combine", "combine_shuffled")
        prompts = [reader.prompt(it.question, d if with_context else ()) for it, d in zip(items, docs)]
        if mode in ("none", "rag"):
            deltas: list[LoRADelta | None] = [None] * len(items)
        elif mode == "format_only":
            fmt = source.format_only()
            deltas = [fmt] * len(items)
        elif mode in ("dyprag", "combine"):
            deltas = [source.request(d, rule) for d in tqdm(docs, desc=f"deltas {mode}", leave=False, disable=not progress)]
        elif mode in ("dyprag_shuffled", "combine_shuffled"):
            deltas = [source.request(docs[partner[i]], rule) for i in range(len(items))]
        else:
            raise ValueError(f"mode {mode!r} is not a SQuAD translator mode")
        outputs = []
        size = reader.config.batch_size
        for start in tqdm(range(0, len(prompts), size), desc=f"{setting} {mode}", leave=False, disable=not progress):
            outputs.extend(reader.generate(prompts[start : start + size], deltas[start : start + size], source.delta_config))
        seconds = time.perf_counter() - begin
        rows.append(
            qa_row(
                "squad",
                setting,
                mode,
                [o.text for o in outputs],
                golds,
                prompt=prompt_name,
                combine_rule=rule if mode not in ("none", "rag", "format_only") and setting != "gold" else None,
                prompt_tokens=statistics.fmean(o.prompt_tokens for o in outputs),
                s_per_q=seconds / len(items),
                sample_predictions=[o.text for o in outputs][:20],
            )
        )
    return rows


# ------------------------------------------------------------------------------ synthetic section


def run_synthetic(
    reader: DeltaReader,
    source: DeltaSource,
    questions: Sequence[Any],
    modes: Sequence[str],
    *,
    greedy: bool = True,
    prag_deltas: dict[str, LoRADelta] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Multiple choice (log-likelihood among the attribute's whole pool) + greedy answer-contained."""
    from tqdm.auto import tqdm

    partner = derangement([q.card.text for q in questions], seed)
    rows = []
    for mode in modes:
        begin = time.perf_counter()
        subset = list(range(len(questions)))
        if mode in ("prag", "prag_shuffled"):
            if not prag_deltas:
                continue
            subset = [i for i, q in enumerate(questions) if q.card.id in prag_deltas]
            ids = [questions[i].card.id for i in subset]
            local = derangement(ids, seed)
        with_context = mode in ("rag", "combine", "combine_shuffled")
        deltas: list[LoRADelta | None] = []
        for k, i in enumerate(subset):
            q = questions[i]
            if mode in ("none", "rag"):
                deltas.append(None)
            elif mode == "format_only":
                deltas.append(source.format_only())
            elif mode in ("dyprag", "combine"):
                deltas.append(source.passage(q.card.text))
            elif mode in ("dyprag_shuffled", "combine_shuffled"):
                deltas.append(source.passage(questions[partner[i]].card.text))
            elif mode == "prag":
                assert prag_deltas is not None
                deltas.append(prag_deltas[q.card.id])
            elif mode == "prag_shuffled":
                assert prag_deltas is not None
                deltas.append(prag_deltas[questions[subset[local[k]]].card.id])
            else:
                raise ValueError(f"unknown mode {mode!r}")
        prompts = [reader.prompt(questions[i].question, [questions[i].card.text] if with_context else ()) for i in subset]
        correct = []
        for prompt, i, delta in tqdm(
            list(zip(prompts, subset, deltas)), desc=f"synthetic MC {mode}", leave=False, disable=not progress
        ):
            q = questions[i]
            scores = reader.candidate_logprobs(prompt, q.candidates, delta, source.delta_config)
            correct.append(float(max(range(len(scores)), key=scores.__getitem__) == q.gold_index))
        texts = [""] * len(subset)
        if greedy:
            size = reader.config.batch_size
            texts = []
            for start in tqdm(range(0, len(prompts), size), desc=f"synthetic greedy {mode}", leave=False, disable=not progress):
                texts.extend(
                    o.text
                    for o in reader.generate(prompts[start : start + size], deltas[start : start + size], source.delta_config)
                )
        golds = [[questions[i].answer] for i in subset]
        row = qa_row(
            "synthetic",
            "cards",
            mode,
            texts,
            golds,
            prompt="short",
            s_per_q=(time.perf_counter() - begin) / max(1, len(subset)),
            sample_predictions=texts[:20],
            candidates_per_question=statistics.fmean(len(questions[i].candidates) for i in subset),
        )
        row["mc_accuracy"] = 100 * statistics.fmean(correct) if correct else None
        row["_per_question"]["mc"] = correct
        for attribute in sorted({questions[i].attribute for i in subset}):
            hits = [c for c, i in zip(correct, subset) if questions[i].attribute == attribute]
            row[f"mc_{attribute}"] = 100 * statistics.fmean(hits)
        if not greedy:
            row.update(em=None, f1=None, contains=None)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ PRAG reference


def train_prag_cards(
    model: Any, tokenizer: Any, questions: Sequence[Any], *, epochs: int = 10, steps: int = 3, lr: float = 1e-2
) -> tuple[dict[str, LoRADelta], dict[str, float | None]]:
    """PRAG on cards: one LoRA per card from the card text (LM loss) plus QA pairs on the card's
    *other* attributes (training wordings), never the attribute the probe asks about."""
    from hyco_rag.dyprag.training.prag import PragConfig, train_passage_lora
    from hyco_rag.evaluation.synthetic import ATTRIBUTES

    config = PragConfig(epochs=epochs, steps=steps, lr=lr, measure=False, max_closed=6, max_context=1)
    deltas, seconds = {}, []
    for q in questions:
        pairs = [(q.card.question(a, 0), q.card.attributes[a]) for a in ATTRIBUTES if a != q.attribute]
        begin = time.perf_counter()
        deltas[q.card.id] = train_passage_lora(model, tokenizer, q.card.text, pairs, config)
        seconds.append(time.perf_counter() - begin)
    nbytes = next(iter(deltas.values())).nbytes if deltas else 0
    return deltas, {
        "prag_train_s_per_passage": statistics.fmean(seconds) if seconds else None,
        "prag_bytes_per_passage": nbytes,
        "prag_epochs": epochs,
        "prag_steps": steps,
        "prag_lr": lr,
    }


# ------------------------------------------------------------------------------ cost


@torch.no_grad()
def translation_cost(reader: DeltaReader, source: DeltaSource, items: Sequence[SquadItem], count: int = 6) -> dict[str, float]:
    """Median ms: prefill of the top-3 RAG prompt vs the closed-book prompt, and encode + translate of the 3 passages."""
    model = reader.model
    device = next(model.parameters()).device
    tok = reader.tokenizer
    prefill_rag: list[float] = []
    prefill_closed: list[float] = []
    encode: list[float] = []
    translate: list[float] = []
    for it in items[:count]:
        for prompt, bucket in (
            (reader.prompt(it.question, it.passages), prefill_rag),
            (reader.prompt(it.question), prefill_closed),
        ):
            ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]], device=device)
            begin = time.perf_counter()
            model(input_ids=ids)
            bucket.append(1000 * (time.perf_counter() - begin))
        begin = time.perf_counter()
        embeddings = source.encoder._encode_uncached(list(it.passages))
        middle = time.perf_counter()
        source.translator.translate(embeddings)
        encode.append(1000 * (middle - begin))
        translate.append(1000 * (time.perf_counter() - middle))
    med = statistics.median
    return {
        "prefill_ms_rag_top3": med(prefill_rag),
        "prefill_ms_closed_book": med(prefill_closed),
        "encode_ms_3_passages": med(encode),
        "translate_ms_3_passages": med(translate),
        "n": min(count, len(items)),
    }


# ------------------------------------------------------------------------------ GPU section (moved from the script)


def _timed(fn: Any, device: torch.device, reps: int, warmup: int = 2) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(reps):
        begin = time.perf_counter()
        fn()
        sync()
        samples.append(1000 * (time.perf_counter() - begin))
    return float(statistics.median(samples))


def gpu_section(
    device: str = "cuda",
    *,
    hidden: int = 4096,
    intermediate: int = 14336,
    translator_layers: int = 32,
    model_layers: int = 2,
    heads: int = 32,
    kv_heads: int = 8,
    vocab: int = 128256,
    batch: int = 8,
    prefill_tokens: int = 512,
    decode_tokens: int = 32,
    passages_per_request: int = 3,
    passage_counts: Sequence[int] = (1, 3, 8, 32),
    dtype: torch.dtype = torch.bfloat16,
    reps: int = 20,
) -> list[dict[str, Any]]:
    """Translator and hooked-forward timings for a Llama-3-8B-shaped model with random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyco_rag.dyprag.config import DeltaConfig
    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig

    dev = torch.device(device)
    shape = f"hidden {hidden}, MLP {intermediate}"
    targets: dict[str, list[int]] = {}
    for layer in range(translator_layers):
        prefix = f"model.layers.{layer}.mlp."
        targets[prefix + "gate_proj"] = [hidden, intermediate]
        targets[prefix + "up_proj"] = [hidden, intermediate]
        targets[prefix + "down_proj"] = [intermediate, hidden]
    translator = ParameterTranslator(TranslatorConfig(input_dim=hidden, targets=targets, rank=2, hidden_dim=128)).to(dev).eval()
    rows: list[dict[str, Any]] = []
    generator = torch.Generator(device="cpu").manual_seed(0)
    for count in passage_counts:
        embeddings = torch.randn(count, hidden, generator=generator).to(dev)
        ms = _timed(lambda embeddings=embeddings: translator.translate(embeddings), dev, reps)
        rows.append(
            {
                "section": "gpu",
                "measure": f"translate {count} passage(s), {translator_layers} layers x 3 targets",
                "shape": shape,
                "ms": ms,
                "ms_per_passage": ms / count,
                "target_ms": GPU_TARGET_MS,
                "meets_target": ms / count <= GPU_TARGET_MS,
                "translator_params": translator.num_parameters(),
                "device": str(dev),
            }
        )
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=model_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=max(8192, prefill_tokens + decode_tokens + 8),
    )
    with dev:
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.generation_config.pad_token_id = 0
    injector = DeltaInjector(model, DeltaConfig())
    names = set(injector.targets)
    request_deltas = []
    for _ in range(batch):
        embeddings = torch.randn(passages_per_request, hidden, generator=generator).to(dev)
        combined = LoRADelta.combine(translator.translate(embeddings), "sum")
        request_deltas.append(
            LoRADelta({k: v for k, v in combined.factors.items() if k in names}, combined.scaling).to(dev, dtype)
        )
    ids = torch.randint(1, vocab, (batch, prefill_tokens), generator=generator).to(dev)
    mask = torch.ones_like(ids)

    def prefill() -> None:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    def prefill_hooked() -> None:
        with injector.apply(request_deltas):
            prefill()

    def decode() -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=ids[:, :16],
                attention_mask=mask[:, :16],
                max_new_tokens=decode_tokens,
                min_new_tokens=decode_tokens,
                do_sample=False,
            )

    def decode_hooked() -> None:
        with injector.apply(request_deltas):
            decode()

    layer_shape = f"{shape}, {model_layers} layers, batch {batch}"
    base, hooked = _timed(prefill, dev, max(3, reps // 4)), _timed(prefill_hooked, dev, max(3, reps // 4))
    rows.append(
        {
            "section": "gpu",
            "measure": f"prefill forward, {prefill_tokens} tokens/row, per-row rank-{2 * passages_per_request} deltas",
            "shape": layer_shape,
            "ms": base,
            "ms_hooked": hooked,
            "overhead_pct": 100 * (hooked - base) / base,
            "device": str(dev),
        }
    )
    base, hooked = _timed(decode, dev, max(3, reps // 4), warmup=1), _timed(decode_hooked, dev, max(3, reps // 4), warmup=1)
    rows.append(
        {
            "section": "gpu",
            "measure": f"generate {decode_tokens} tokens (16-token prompt), per-row deltas; ms per token",
            "shape": layer_shape,
            "ms": base / decode_tokens,
            "ms_hooked": hooked / decode_tokens,
            "overhead_pct": 100 * (hooked - base) / base,
            "device": str(dev),
        }
    )
    return rows


def run_gpu_section(
    enabled: bool = True, device: str | None = None, *, model_layers: int = 2, quick: bool = False, **shape: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The GPU section's rows and whether it ran (``{"run": False, "reason": ...}`` if not)."""
    if not enabled:
        return [], {"run": False, "reason": "--no-gpu"}
    if device is None:
        if not torch.cuda.is_available():
            return [], {"run": False, "reason": "CUDA is not available on this machine"}
        device = "cuda"
    rows = gpu_section(device, model_layers=model_layers, reps=5 if quick else 20, **shape)
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else device
    return rows, {"run": True, "device": name, "model_layers": model_layers}
