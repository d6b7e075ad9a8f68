"""Training groups for the compressor: a query, its gold passage(s) and distractors, with labels.

What we train on (and what we keep out, so evaluation stays honest):

- SQuAD v2.0, cs224n dev half (the only half with answers; articles disjoint from v1.1 dev):
  answerable questions give answer spans (local labels), the answer sentence (sentence
  label) and the gold paragraph (passage label). The last ``holdout_articles`` articles are
  kept out for tuning.
- SQuAD v2.0, cs224n test half: its answers are withheld, but each question still names its
  paragraph, so these give passage-level labels only (sentence and word losses masked).
- HotpotQA / 2WikiMultihopQA / MuSiQue train samples: the supporting paragraphs (passage
  labels), supporting sentences (HotpotQA, 2Wiki) and answer occurrences inside them. The
  first half of each file is held out for the external generality check and never trained on.
- Never SQuAD v1.1 dev (the benchmark).

Distractors: other paragraphs of the same article (the BM25-closest one, which is hard, plus a
random one) and one paragraph *retrieved* by BM25 from other articles; the gold passage goes
to a random position.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hyco_rag.data import (
    SQUAD_TRAIN,
    QAExample,
    data_file,
    load_2wikimultihopqa,
    load_hotpotqa,
    load_musique,
)

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
            "id": self.id, "query": self.query, "answers": self.answers, "source": self.source,
            "fine_labels": self.fine_labels, "weight": self.weight,
            "passages": [{"text": p.text, "label": p.label, "answer_spans": p.answer_spans,
                          "evidence_spans": p.evidence_spans} for p in self.passages],
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


def _read_squad(relative: str) -> list[dict]:
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
) -> list[TrainGroup]:
    """SQuAD v2.0 (cs224n) groups; ``split="holdout"`` gives the held-out articles' questions."""
    rng = random.Random(seed)
    answered_articles = _read_squad(SQUAD_TRAIN[0])
    unanswered_articles = _read_squad(SQUAD_TRAIN[1])
    if split == "holdout":
        sources = [(a, True) for a in answered_articles[-holdout_articles:]]
    elif split == "train":
        sources = [(a, True) for a in answered_articles[: len(answered_articles) - holdout_articles]]
        sources += [(a, False) for a in unanswered_articles]
    else:
        raise ValueError(f"split must be 'train' or 'holdout', got {split!r}")
    paragraphs = [(ai, p["context"]) for ai, (article, _) in enumerate(sources) for p in article["paragraphs"]]
    retriever = _Retriever([text for _, text in paragraphs])
    offsets: list[int] = []
    total = 0
    for article, _ in sources:
        offsets.append(total)
        total += len(article["paragraphs"])

    # Pick the questions first (seeded), so building groups costs only what is used.
    candidates: list[tuple[int, int, dict, bool]] = []
    for ai, (article, answered) in enumerate(sources):
        for pi, paragraph in enumerate(article["paragraphs"]):
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                if answered:
                    valid = [a for a in qa.get("answers", [])
                             if context[a["answer_start"] : a["answer_start"] + len(a["text"])] == a["text"]]
                    if not valid:
                        continue  # v2 unanswerable: the paragraph does not answer it
                candidates.append((ai, pi, qa, answered))
    rng.shuffle(candidates)
    answered_pick = [c for c in candidates if c[3]]
    unanswered_pick = [c for c in candidates if not c[3]]
    if limit is not None:
        answered_pick = answered_pick[:limit]
    if passage_only_limit is not None:
        unanswered_pick = unanswered_pick[:passage_only_limit]
    chosen_questions = answered_pick + unanswered_pick
    rng.shuffle(chosen_questions)

    groups: list[TrainGroup] = []
    for ai, pi, qa, answered in chosen_questions:
        article = sources[ai][0]
        first = offsets[ai]
        count = len(article["paragraphs"])
        context = article["paragraphs"][pi]["context"]
        answers = [a for a in qa.get("answers", []) if context[a["answer_start"] : a["answer_start"] + len(a["text"])] == a["text"]]
        scores = retriever.scores(qa["question"])
        same = [j for j in range(first, first + count) if j != first + pi]
        same.sort(key=lambda j: -scores[j])
        chosen = same[:1] if same and num_same_article else []
        rest = [j for j in same if j not in chosen]
        chosen += rng.sample(rest, min(max(0, num_same_article - len(chosen)), len(rest)))
        if num_retrieved:
            others = scores.copy()
            others[first : first + count] = -1
            top = others.argsort()[::-1][:num_retrieved]
            chosen += [int(j) for j in top if others[j] > 0]
        passages = [TrainPassage(paragraphs[j][1], 0.0) for j in chosen]
        spans = sorted({(a["answer_start"], a["answer_start"] + len(a["text"])) for a in answers})
        evidence = sorted({_sentence_span(context, start) for start, _ in spans})
        gold = TrainPassage(context, 1.0, spans, evidence)
        passages.insert(rng.randint(0, len(passages)), gold)
        groups.append(
            TrainGroup(
                id=qa["id"], query=qa["question"], answers=list(dict.fromkeys(a["text"] for a in answers)),
                passages=passages, source="squad" if answered else "squad-passage",
                fine_labels=answered, weight=1.0 if answered else 0.5,
            )
        )
    return groups


def _find_all(text: str, needle: str) -> list[tuple[int, int]]:
    spans = []
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


def multihop_groups(*, holdout_fraction: float = 0.5, max_passages: int = 6, seed: int = 0) -> list[TrainGroup]:
    """Training groups from the second part of HotpotQA, MuSiQue and 2Wiki (first part held out)."""
    groups: list[TrainGroup] = []
    for loader in (load_hotpotqa, load_musique, load_2wikimultihopqa):
        examples = loader()
        cut = int(round(len(examples) * holdout_fraction))
        for example in examples[cut:]:
            group = multihop_group(example, max_passages=max_passages, seed=seed)
            if group is not None:
                groups.append(group)
    return groups


def holdout_multihop(*, holdout_fraction: float = 0.5) -> dict[str, list[QAExample]]:
    """The held-out first part of each multi-hop file (never trained on)."""
    out = {}
    for name, loader in (("hotpotqa", load_hotpotqa), ("musique", load_musique), ("2wikimultihopqa", load_2wikimultihopqa)):
        examples = loader()
        out[name] = examples[: int(round(len(examples) * holdout_fraction))]
    return out
