"""Soft sentence labels distilled from a reader LLM (default: the embedded SmolLM2-135M).

For a question with its gold passage(s) and gold answer, a sentence matters as much as the
reader's log-likelihood of the answer drops when that sentence is removed. This catches what
span labels miss: the sentence that introduces the entity a pronoun in the answer sentence
refers to, or the bridge sentence of a multi-hop question.

It is CPU-heavy (one reader forward per removed sentence), so it runs on a small subset, only
over the few most promising sentences of each example, and is cached on disk (JSON, written
atomically after every few examples) so training runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hyco_rag.compression.training.data import TrainGroup
from hyco_rag.compression.words import join_units, segment

logger = logging.getLogger(__name__)

#: Below this drop (nats) in the answer's log-likelihood a sentence earns no soft label.
MIN_DROP = 0.3


def _text_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _key(group: TrainGroup) -> str:
    """Cache key: the question, answers and gold passages (not their order, not the distractors)."""
    digest = hashlib.sha1()
    digest.update(group.query.encode())
    digest.update("\x00".join(group.answers).encode())
    for text_id in sorted(_text_id(p.text) for p in group.passages if p.label > 0):
        digest.update(text_id.encode())
    return f"{group.id}:{digest.hexdigest()[:12]}"


def load_cache(path: str | Path) -> dict[str, dict[str, list[float]]]:
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    return data.get("labels", {}) if isinstance(data, dict) else {}


def soft_labels_for(group: TrainGroup, cache: dict[str, dict[str, list[float]]]) -> dict[int, np.ndarray] | None:
    """Per gold passage index: soft label per sentence (our segmentation), if cached.

    Entries are stored per passage text hash, so the group's passage order does not matter.
    """
    entry = cache.get(_key(group))
    if entry is None:
        return None
    out = {}
    for p, passage in enumerate(group.passages):
        labels = entry.get(_text_id(passage.text)) if passage.label > 0 else None
        if labels is not None:
            out[p] = np.asarray(labels, dtype=np.float32)
    return out


def _candidates(group: TrainGroup, max_candidates: int) -> list[tuple[int, int]]:
    """(passage, sentence) pairs worth a forward: evidence/answer sentences and their neighbours,
    then the sentences sharing most words with the question."""
    query_words = {w.lower().strip(".,;:?!\"'()") for w in group.query.split()}
    scored: list[tuple[float, int, int]] = []
    for p, passage in enumerate(group.passages):
        if passage.label <= 0:
            continue
        seg = segment(passage.text)
        marks = [
            s
            for start, end in passage.evidence_spans + passage.answer_spans
            for s in np.unique(seg.sentence[(seg.ends > start) & (seg.starts < end)]).tolist()
        ]
        for s in range(seg.num_sentences):
            words = {seg.unit_text(u).lower().strip(".,;:?!\"'()") for u in np.flatnonzero(seg.sentence == s)}
            overlap = len(words & query_words) / (1 + len(query_words))
            bonus = 2.0 if s in marks else (1.0 if (s - 1) in marks or (s + 1) in marks else 0.0)
            scored.append((bonus + overlap, p, s))
    scored.sort(reverse=True)
    return [(p, s) for _, p, s in scored[:max_candidates]]


@torch.inference_mode()
def _answer_logprob(model, tokenizer, prompts: Sequence[str], answer: str, device) -> np.ndarray:
    """Sum log p(answer tokens | prompt) for each prompt, in one padded batch."""
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    sequences, starts = [], []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        starts.append(len(ids))
        sequences.append(ids + answer_ids)
    length = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(sequences):
        input_ids[i, : len(seq)] = torch.as_tensor(seq)
        mask[i, : len(seq)] = 1
    hidden = model.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    n = len(answer_ids)
    rows = torch.arange(len(sequences)).unsqueeze(1)
    positions = torch.as_tensor(starts).unsqueeze(1) - 1 + torch.arange(n).unsqueeze(0)
    logits = model.lm_head(hidden[rows, positions.to(hidden.device)]).float()
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.as_tensor(answer_ids, device=logp.device).expand(len(sequences), n)
    return logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).sum(-1).cpu().numpy()


def distill(
    groups: Sequence[TrainGroup],
    cache_path: str | Path,
    *,
    reader: str | None = None,
    max_examples: int = 120,
    max_candidates: int = 4,
    time_limit_s: float | None = None,
    device: str | None = None,
    reader_model: tuple | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Compute (or reuse) soft labels for up to ``max_examples`` groups; returns the cache.

    ``reader_model``: an already loaded ``(model, tokenizer)``; else ``reader`` is loaded.
    """
    from tqdm.auto import tqdm

    from hyco_rag.models import load_causal_lm
    from hyco_rag.prompts import build_prompt
    from hyco_rag.results import write_json_atomic

    cache_path = Path(cache_path)
    cache = load_cache(cache_path)
    todo = [g for g in groups if g.fine_labels and g.answers and any(p.label > 0 for p in g.passages)]
    todo = [g for g in todo[:max_examples] if _key(g) not in cache]
    if not todo:
        return cache
    model, tokenizer = reader_model if reader_model is not None else load_causal_lm(reader, device=device)
    model.eval()
    use_bf16 = model.device.type == "cpu"
    from hyco_rag.compression.compressor import cpu_has_fast_bf16

    use_bf16 = use_bf16 and cpu_has_fast_bf16()
    started = time.perf_counter()
    for n, group in enumerate(tqdm(todo, desc="distilling sentence labels", unit="ex")):
        if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
            logger.info("distillation time limit reached after %d examples", n)
            break
        gold = [p for p, passage in enumerate(group.passages) if passage.label > 0]
        segs = {p: segment(group.passages[p].text) for p in gold}
        candidates = _candidates(group, max_candidates)
        prompts = [build_prompt(tokenizer, group.query, [group.passages[p].text for p in gold])]
        for p, s in candidates:
            docs = []
            for q in gold:
                if q == p:
                    keep = segs[q].sentence != s
                    docs.append(join_units(segs[q], keep)[0])
                else:
                    docs.append(group.passages[q].text)
            prompts.append(build_prompt(tokenizer, group.query, docs))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            logps = _answer_logprob(model, tokenizer, prompts, group.answers[0], model.device)
        drops = np.maximum(0.0, logps[0] - logps[1:])
        top = float(drops.max()) if drops.size else 0.0
        labels = {p: [0.0] * segs[p].num_sentences for p in gold}
        if top >= MIN_DROP and math.isfinite(top):
            for (p, s), drop in zip(candidates, drops):
                labels[p][s] = round(float(min(1.0, drop / top)) if drop >= MIN_DROP else 0.0, 4)
        entry = {_text_id(group.passages[p].text): values for p, values in labels.items()}
        cache[_key(group)] = entry
        if (n + 1) % 5 == 0 or n + 1 == len(todo):
            write_json_atomic(cache_path, {"reader": reader or "default", "labels": cache})
    write_json_atomic(cache_path, {"reader": reader or "default", "labels": cache})
    return cache
