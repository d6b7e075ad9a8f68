"""Training groups for the compressor: a query, its gold passage(s) and distractors, with labels.

What we train on, and what is held out (one definition, :data:`SPLITS`, shared by the training
command and the benchmark, so evaluation stays honest):

- **SQuAD v1.1 train** (``squad-train-extra/train-v1.1-explorer.json``, 442 articles): answer
  spans (local labels), the answer sentence (sentence label) and the gold paragraph (passage
  label). Questions whose answer string occurs more than once in the paragraph (the file's
  uncertain ``answer_start``) label every occurrence. The last ``holdout_articles`` articles
  are kept out for tuning.
- **Multi-hop train files**: HotpotQA ``hotpotqa-train-extra`` (220 questions: the first 20
  official train records, and 200 random train rows with paragraph-level gold only) and
  2WikiMultihopQA ``train-500`` rows 100-499: supporting paragraphs (passage labels),
  supporting sentences and answer occurrences inside them.
- **Held out, never trained on**: SQuAD v1.1 dev (the benchmark) and the cs224n SQuAD v2.0
  files (they *are* v1.1 dev paragraphs); HotpotQA ``hotpotqa-train/hotpotqa_train.json``
  (100); 2Wiki rows 0-99 (100); MuSiQue ``musique-train`` (all 100: with only 100 questions,
  holding out >= 100 leaves none to train on, so MuSiQue, the 20-paragraph 2-4 hop family, is
  the never-seen family of the generality check).
- :func:`check_no_leak` raises :class:`DataLeakError` when a training paragraph or question
  (normalised) also occurs in an evaluation set; :func:`remove_eval_paragraphs` first drops
  shared *distractor* paragraphs (Wikipedia pages recur across HotpotQA questions) and whole
  groups whose gold paragraph is an evaluation paragraph.

Distractors: other paragraphs of the same article (the BM25-closest one, which is hard, plus a
random one) and one paragraph *retrieved* by BM25 from other articles; the gold passage goes
to a random position.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hyco_rag.data import (
    Passage,
    QAExample,
    data_file,
    load_2wikimultihopqa,
    load_hotpotqa,
    load_musique,
)

#: SQuAD v1.1 train: the single-hop training source.
SQUAD_TRAIN_FILE = "squad-train-extra/train-v1.1-explorer.json"
#: Files no training group may come from: SQuAD v1.1 dev and the cs224n files (v1.1 dev paragraphs).
NEVER_TRAIN_FILES = ("squad/dev-v1.1.json", "squad/cs224n-dev-v2.0.json", "squad/cs224n-test-v2.0.json")
#: Multi-hop files and which rows train / are held out (``(start, stop)`` row ranges; None: the end).
SPLITS: dict[str, dict[str, list[tuple[str, tuple[int, int | None]]]]] = {
    "hotpotqa": {
        "train": [
            ("hotpotqa-train-extra/hotpot_train_v1.1_first20.json", (0, None)),
            ("hotpotqa-train-extra/hotpotqa_train_hf200.jsonl", (0, None)),
        ],
        "heldout": [("hotpotqa-train/hotpotqa_train.json", (0, None))],
    },
    "2wikimultihopqa": {
        "train": [("2wikimultihopqa/train-500-with-context.json", (100, None))],
        "heldout": [("2wikimultihopqa/train-500-with-context.json", (0, 100))],
    },
    "musique": {
        "train": [],
        "heldout": [("musique-train/musique_train.json", (0, None))],
    },
}

logger = logging.getLogger(__name__)

_STOP = frozenset(
    "the a an of in on at to for is was are were be been what which who whom whose when where why how did do does "
    "and or but by with from as that this it its into than then there their they he she his her not".split()
)


@dataclass
class TrainPassage:
    """A passage of a group. ``label``: passage relevance target; ``answer_spans`` and
    ``evidence_spans``: character spans of the answer and of evidence sentences."""

    text: str
    label: float
    answer_spans: list[tuple[int, int]] = field(default_factory=list)
    evidence_spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class TrainGroup:
    """One listwise training item. ``fine_labels`` False: only passage labels are trusted."""

    id: str
    query: str
    answers: list[str]
    passages: list[TrainPassage]
    source: str
    fine_labels: bool = True
    weight: float = 1.0

    @property
    def gold(self) -> list[int]:
        return [i for i, p in enumerate(self.passages) if p.label > 0]

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "query": self.query,
            "answers": self.answers,
            "source": self.source,
            "fine_labels": self.fine_labels,
            "weight": self.weight,
            "passages": [
                {"text": p.text, "label": p.label, "answer_spans": p.answer_spans, "evidence_spans": p.evidence_spans}
                for p in self.passages
            ],
        }


def _sentence_span(text: str, position: int) -> tuple[int, int]:
    """Character span of the sentence (our segmentation) that holds ``position``."""
    from hyco_rag.compression.words import segment

    seg = segment(text)
    if not len(seg):
        return (0, len(text))
    unit = int(min(np.searchsorted(seg.ends, position, side="right"), len(seg) - 1))
    sentence = seg.sentence[unit]
    members = np.flatnonzero(seg.sentence == sentence)
    return int(seg.starts[members[0]]), int(seg.ends[members[-1]])


_WORD = re.compile(r"\w+", re.UNICODE)


class _Retriever:
    """BM25 over all training paragraphs: hard same-article and cross-article distractors.

    A small inverted index in plain Python (no scikit-learn import, which alone costs many
    seconds on a busy CPU).
    """

    def __init__(self, texts: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.size = len(texts)
        postings: dict[str, dict[int, int]] = {}
        lengths = []
        for doc, text in enumerate(texts):
            words = [w for w in _WORD.findall(text.lower()) if w not in _STOP]
            lengths.append(len(words))
            for word in words:
                postings.setdefault(word, {}).setdefault(doc, 0)
                postings[word][doc] += 1
        average = (sum(lengths) / len(lengths)) if lengths else 1.0
        self.index: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for word, docs in postings.items():
            ids = np.fromiter(docs.keys(), dtype=np.int64, count=len(docs))
            tf = np.fromiter(docs.values(), dtype=np.float64, count=len(docs))
            norm = np.asarray([lengths[i] for i in ids], dtype=np.float64) / average
            idf = math.log(1 + (self.size - len(docs) + 0.5) / (len(docs) + 0.5))
            self.index[word] = (ids, idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * norm)))

    def scores(self, query: str) -> np.ndarray:
        out = np.zeros(self.size)
        for word in set(_WORD.findall(query.lower())):
            if word in self.index:
                ids, weights = self.index[word]
                out[ids] += weights
        return out


@functools.lru_cache(maxsize=4)
def _read_squad(relative: str) -> list[dict]:
    """A SQuAD file's articles (cached: treat as read-only)."""
    with open(data_file(relative), encoding="utf-8") as handle:
        return json.load(handle)["data"]


def squad_groups(
    *,
    num_same_article: int = 2,
    num_retrieved: int = 1,
    holdout_articles: int = 2,
    seed: int = 0,
    split: str = "train",
    limit: int | None = None,
    passage_only_limit: int | None = None,
    path: str = SQUAD_TRAIN_FILE,
    pool_articles: int = 40,
) -> list[TrainGroup]:
    """SQuAD v1.1 train groups; ``split="holdout"`` gives the held-out (last) articles' questions.

    ``limit`` answerable questions get every label; ``passage_only_limit`` further questions
    (other paragraphs) get passage labels only, at half weight.
    """
    if path in NEVER_TRAIN_FILES:
        raise DataLeakError(f"{path} is evaluation data (SQuAD v1.1 dev paragraphs); never train on it")
    rng = random.Random(seed)
    articles = _read_squad(path)
    if split == "holdout":
        sources = articles[-holdout_articles:] if holdout_articles else []
    elif split == "train":
        sources = articles[: len(articles) - holdout_articles]
    else:
        raise ValueError(f"split must be 'train' or 'holdout', got {split!r}")
    # Pick the questions first (seeded), so building groups costs only what is used.
    candidates: list[tuple[int, int, dict]] = []
    for ai, article in enumerate(sources):
        for pi, paragraph in enumerate(article["paragraphs"]):
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                valid = [
                    a
                    for a in qa.get("answers", [])
                    if context[a["answer_start"] : a["answer_start"] + len(a["text"])] == a["text"]
                ]
                if valid:
                    candidates.append((ai, pi, qa))
    rng.shuffle(candidates)
    wanted = len(candidates) if limit is None else limit
    answered_pick = candidates[:wanted]
    # Passage-only questions come from other paragraphs than the fully labelled ones.
    used = {(ai, pi) for ai, pi, _ in answered_pick}
    rest = [c for c in candidates[wanted:] if (c[0], c[1]) not in used]
    passage_pick = rest[: passage_only_limit or 0]
    chosen_questions = [(c, True) for c in answered_pick] + [(c, False) for c in passage_pick]
    rng.shuffle(chosen_questions)
    # BM25 pool: the chosen questions' articles plus up to ``pool_articles`` others (cross-article
    # distractors), so a handful of questions does not index all 18,896 paragraphs.
    needed = sorted({ai for (ai, _, _), _ in chosen_questions})
    others = [ai for ai in range(len(sources)) if ai not in set(needed)]
    pool = sorted(set(needed) | set(rng.sample(others, min(len(others), pool_articles))))
    position = {ai: k for k, ai in enumerate(pool)}
    sources = [sources[ai] for ai in pool]
    chosen_questions = [((position[ai], pi, qa), answered) for (ai, pi, qa), answered in chosen_questions]
    paragraphs = [(ai, p["context"]) for ai, article in enumerate(sources) for p in article["paragraphs"]]
    offsets: list[int] = []
    total = 0
    for article in sources:
        offsets.append(total)
        total += len(article["paragraphs"])
    retriever = _Retriever([text for _, text in paragraphs]) if chosen_questions else None

    groups: list[TrainGroup] = []
    for (ai, pi, qa), answered in chosen_questions:
        article = sources[ai]
        first = offsets[ai]
        count = len(article["paragraphs"])
        context = article["paragraphs"][pi]["context"]
        answers = [
            a for a in qa.get("answers", []) if context[a["answer_start"] : a["answer_start"] + len(a["text"])] == a["text"]
        ]
        assert retriever is not None  # built whenever there are questions
        scores = retriever.scores(qa["question"])
        same = [j for j in range(first, first + count) if j != first + pi]
        same.sort(key=lambda j: -scores[j])
        chosen = same[:1] if same and num_same_article else []
        rest_same = [j for j in same if j not in chosen]
        chosen += rng.sample(rest_same, min(max(0, num_same_article - len(chosen)), len(rest_same)))
        if num_retrieved:
            others = scores.copy()
            others[first : first + count] = -1
            top = others.argsort()[::-1][:num_retrieved]
            chosen += [int(j) for j in top if others[j] > 0]
        passages = [TrainPassage(paragraphs[j][1], 0.0) for j in chosen]
        if int(qa.get("answer_occurrences", 1) or 1) > 1:
            # answer_start was recomputed and is uncertain: label every occurrence of the answer.
            spans = sorted({span for a in answers for span in _find_all(context, a["text"])})
        else:
            spans = sorted({(a["answer_start"], a["answer_start"] + len(a["text"])) for a in answers})
        evidence = sorted({_sentence_span(context, start) for start, _ in spans})
        gold = TrainPassage(context, 1.0, spans if answered else [], evidence if answered else [])
        passages.insert(rng.randint(0, len(passages)), gold)
        groups.append(
            TrainGroup(
                id=qa["id"],
                query=qa["question"],
                answers=list(dict.fromkeys(a["text"] for a in answers)),
                passages=passages,
                source="squad" if answered else "squad-passage",
                fine_labels=answered,
                weight=1.0 if answered else 0.5,
            )
        )
    return groups


def _find_all(text: str, needle: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    if not needle.strip():
        return spans
    lower, target = text.lower(), needle.lower()
    start = lower.find(target)
    while start != -1:
        spans.append((start, start + len(needle)))
        start = lower.find(target, start + 1)
    return spans


def multihop_group(example: QAExample, *, max_passages: int = 6, seed: int = 0) -> TrainGroup | None:
    """Supporting paragraphs + the example's own (hard) distractors, with evidence sentences."""
    rng = random.Random(f"{seed}-{example.id}")
    gold = list(dict.fromkeys(example.gold))
    if not gold:
        return None
    others = [i for i in range(len(example.passages)) if i not in gold]
    chosen = gold + rng.sample(others, min(len(others), max(0, max_passages - len(gold))))
    rng.shuffle(chosen)
    answers = [a for a in example.answers if a and a.lower() not in ("yes", "no")]
    passages = []
    for i in chosen:
        source = example.passages[i]
        is_gold = i in gold
        evidence = [source.sentences[s] for p, s in example.supporting_sentences if p == i and s < len(source.sentences)]
        answer_spans = sorted({span for a in answers for span in _find_all(source.text, a)}) if is_gold else []
        if is_gold and not evidence:
            evidence = sorted({_sentence_span(source.text, start) for start, _ in answer_spans})
        passages.append(TrainPassage(source.text, 1.0 if is_gold else 0.0, answer_spans, evidence))
    return TrainGroup(example.id, example.question, list(example.answers), passages, example.source)


def _load_hf_hotpot_jsonl(path: Path, source: str) -> list[QAExample]:
    """HotpotQA rows of ``hotpotqa_train_hf200.jsonl``: docs with sentence lists, gold doc ids."""
    examples = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            passages, gold = [], []
            for i, doc in enumerate(record["docs"]):
                text, spans = "", []
                for sentence in doc.get("sentences") or [doc["text"]]:
                    sentence = sentence.strip()
                    if not sentence:
                        continue
                    if text:
                        text += " "
                    spans.append((len(text), len(text) + len(sentence)))
                    text += sentence
                passages.append(
                    Passage(text=text, title=doc.get("title", ""), id=f"hf{record['task_id']}-{i}", sentences=tuple(spans))
                )
                if doc["doc_id"] in record.get("support_doc_ids", []):
                    gold.append(i)
            examples.append(
                QAExample(
                    id=f"hotpot-hf-{record['task_id']}",
                    question=record["question"],
                    answers=[record["answer"]],
                    passages=passages,
                    gold=gold,
                    source=source,
                )
            )
    return examples


_LOADERS = {"hotpotqa": load_hotpotqa, "2wikimultihopqa": load_2wikimultihopqa, "musique": load_musique}


def load_split(family: str, split: str) -> list[QAExample]:
    """The ``split`` ("train" or "heldout") questions of a multi-hop ``family`` (see :data:`SPLITS`)."""
    if family not in SPLITS:
        raise ValueError(f"unknown multi-hop family {family!r}; choose from {', '.join(SPLITS)}")
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    examples: list[QAExample] = []
    for relative, (start, stop) in SPLITS[family][split]:
        path = data_file(relative)
        rows = _load_hf_hotpot_jsonl(path, family) if relative.endswith(".jsonl") else _LOADERS[family](path)
        examples.extend(rows[start:stop])
    return examples


def multihop_groups(*, max_passages: int = 6, seed: int = 0, families: Sequence[str] | None = None) -> list[TrainGroup]:
    """Training groups from the multi-hop train splits (:data:`SPLITS`; held-out rows never)."""
    groups: list[TrainGroup] = []
    for family in families or SPLITS:
        for example in load_split(family, "train"):
            group = multihop_group(example, max_passages=max_passages, seed=seed)
            if group is not None:
                groups.append(group)
    return groups


def holdout_multihop() -> dict[str, list[QAExample]]:
    """The held-out questions of each multi-hop family (never trained on)."""
    return {family: load_split(family, "heldout") for family in SPLITS}


# -- leak check --------------------------------------------------------------------------------
class DataLeakError(ValueError):
    """A training paragraph or question also occurs in an evaluation set."""


def normalise_text(text: str) -> str:
    """Case- and whitespace-insensitive key of a paragraph or question."""
    return " ".join(text.lower().split())


def evaluation_texts(*, squad: bool = True, multihop: bool = True) -> tuple[set[str], set[str]]:
    """Normalised (paragraphs, questions) of every evaluation set: SQuAD v1.1 dev, the cs224n
    files (the same paragraphs) and the held-out multi-hop splits. Missing files are skipped."""
    paragraphs, questions = _evaluation_texts(squad, multihop)
    return set(paragraphs), set(questions)


@functools.lru_cache(maxsize=4)
def _evaluation_texts(squad: bool, multihop: bool) -> tuple[frozenset[str], frozenset[str]]:
    paragraphs: set[str] = set()
    questions: set[str] = set()
    if squad:
        for relative in NEVER_TRAIN_FILES:
            try:
                articles = _read_squad(relative)
            except FileNotFoundError:
                logger.warning("leak check: %s not found, not checked against", relative)
                continue
            for article in articles:
                for paragraph in article["paragraphs"]:
                    paragraphs.add(normalise_text(paragraph["context"]))
                    questions.update(normalise_text(qa["question"]) for qa in paragraph["qas"])
    if multihop:
        for family in SPLITS:
            for example in load_split(family, "heldout"):
                questions.add(normalise_text(example.question))
                paragraphs.update(normalise_text(p.text) for p in example.passages)
    paragraphs.discard("")
    return frozenset(paragraphs), frozenset(questions)


def remove_eval_paragraphs(groups: list[TrainGroup], paragraphs: set[str], questions: set[str]) -> list[TrainGroup]:
    """Drop distractors that are evaluation paragraphs, and groups whose question or gold is one."""
    kept: list[TrainGroup] = []
    dropped_groups = dropped_passages = 0
    for group in groups:
        if normalise_text(group.query) in questions or any(
            p.label > 0 and normalise_text(p.text) in paragraphs for p in group.passages
        ):
            dropped_groups += 1
            continue
        passages = [p for p in group.passages if normalise_text(p.text) not in paragraphs]
        dropped_passages += len(group.passages) - len(passages)
        if len(passages) != len(group.passages):
            group = TrainGroup(group.id, group.query, group.answers, passages, group.source, group.fine_labels, group.weight)
        kept.append(group)
    if dropped_groups or dropped_passages:
        logger.info(
            "leak filter: dropped %d groups and %d distractor paragraphs shared with evaluation sets",
            dropped_groups,
            dropped_passages,
        )
    return kept


def check_no_leak(groups: Sequence[TrainGroup], paragraphs: set[str], questions: set[str]) -> dict[str, int]:
    """Raise :class:`DataLeakError` if any training paragraph or question is in an evaluation set.

    Returns what was checked (counts), for the training report.
    """
    leaks = []
    checked = 0
    for group in groups:
        if normalise_text(group.query) in questions:
            leaks.append(f"question of {group.id} ({group.source}): {group.query[:80]!r}")
        for passage in group.passages:
            checked += 1
            if normalise_text(passage.text) in paragraphs:
                leaks.append(f"paragraph of {group.id} ({group.source}): {passage.text[:80]!r}")
        if len(leaks) >= 5:
            break
    if leaks:
        raise DataLeakError(
            "training data overlaps an evaluation set (SQuAD v1.1 dev / cs224n / held-out multi-hop): " + "; ".join(leaks[:5])
        )
    return {"groups": len(groups), "paragraphs": checked, "eval_paragraphs": len(paragraphs), "eval_questions": len(questions)}
