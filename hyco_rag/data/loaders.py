"""Loaders for the QA sets under ``../shared/data``, all returning :class:`QAExample`.

SQuAD gives single-hop questions with answer offsets; we build the realistic RAG setting the
data README describes: the gold paragraph plus same-article distractors, gold at a random
(seeded) position. HotpotQA, MuSiQue and 2WikiMultihopQA give multi-hop questions over 10-20
paragraphs with supporting-paragraph labels; StrategyQA gives yes/no questions with facts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyco_rag.data.paths import data_file
from hyco_rag.data.schema import AnswerSpan, Passage, QAExample

SQUAD_DEV = "squad/dev-v1.1.json"
#: The cs224n SQuAD v2.0 re-split.  NOT training data: its paragraphs ARE SQuAD v1.1 dev paragraphs
#: (646/646 and 558/570), so anything trained on them and scored on v1.1 dev is contaminated.
#: Train on ``squad-train-extra/train-v1.1-explorer.json`` (SQuAD v1.1 train).
SQUAD_CS224N_DEV_PARAGRAPHS = ("squad/cs224n-dev-v2.0.json", "squad/cs224n-test-v2.0.json")
HOTPOTQA = "hotpotqa-train/hotpotqa_train.json"
MUSIQUE = "musique-train/musique_train.json"
TWOWIKI = "2wikimultihopqa/train-500-with-context.json"
TWOWIKI_CORPUS = "2wikimultihopqa/2wikimultihopqa_corpus.json"
STRATEGYQA = "strategyqa/strategyqa_train.json"


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    resolved = path if path.is_absolute() or path.is_file() else data_file(str(path))
    with open(resolved, encoding="utf-8") as handle:
        return json.load(handle)


def _sentences_to_passage(title: str, sentences: list[str], pid: str) -> Passage:
    """Join sentence lists (HotpotQA / 2Wiki style) and keep each sentence's char span."""
    text, spans = "", []
    for sentence in sentences:
        sentence = sentence.strip()
        if not sentence:
            continue
        if text:
            text += " "
        spans.append((len(text), len(text) + len(sentence)))
        text += sentence
    return Passage(text=text, title=title, id=pid, sentences=tuple(spans))


@dataclass(frozen=True)
class SquadParagraph:
    """One SQuAD paragraph with its answerable questions (doc -> QA pairs for PRAG/DyPRAG)."""

    title: str
    context: str
    questions: list[tuple[str, list[str]]]
    id: str


def squad_paragraphs(path: str | Path = SQUAD_DEV, *, answerable_only: bool = True) -> Iterator[SquadParagraph]:
    """Iterate paragraphs of a SQuAD v1.1/v2.0 file with their (question, answers) pairs."""
    for a, article in enumerate(_read_json(path)["data"]):
        for p, paragraph in enumerate(article["paragraphs"]):
            questions = []
            for qa in paragraph["qas"]:
                answers = [answer["text"] for answer in qa.get("answers", [])]
                if answers or not answerable_only:
                    questions.append((qa["question"], answers))
            yield SquadParagraph(article["title"], paragraph["context"], questions, f"{a}-{p}")


def load_squad(
    path: str | Path = SQUAD_DEV,
    *,
    num_distractors: int = 9,
    seed: int = 0,
    limit: int | None = None,
    answerable_only: bool = True,
) -> list[QAExample]:
    """SQuAD questions, each with its gold paragraph and same-article distractors.

    Distractors are other paragraphs of the same article (topically close, hence hard); the
    gold paragraph lands at a seeded random position. Answer offsets are kept as spans.
    """
    rng = random.Random(seed)
    examples: list[QAExample] = []
    for article_index, article in enumerate(_read_json(path)["data"]):
        contexts = [paragraph["context"] for paragraph in article["paragraphs"]]
        for p, paragraph in enumerate(article["paragraphs"]):
            for qa in paragraph["qas"]:
                answers = qa.get("answers", [])
                if answerable_only and not answers:
                    continue
                others = [i for i in range(len(contexts)) if i != p]
                chosen = rng.sample(others, min(num_distractors, len(others)))
                gold_position = rng.randint(0, len(chosen))
                order = chosen[:gold_position] + [p] + chosen[gold_position:]
                passages = [Passage(text=contexts[i], title=article["title"], id=f"{article_index}-{i}") for i in order]
                spans = [
                    AnswerSpan(gold_position, answer["answer_start"], answer["answer_start"] + len(answer["text"]))
                    for answer in answers
                    if contexts[p][answer["answer_start"] : answer["answer_start"] + len(answer["text"])] == answer["text"]
                ]
                examples.append(
                    QAExample(
                        id=qa["id"],
                        question=qa["question"],
                        answers=list(dict.fromkeys(answer["text"] for answer in answers)),
                        passages=passages,
                        gold=[gold_position],
                        answer_spans=spans,
                        source="squad",
                    )
                )
                if limit is not None and len(examples) >= limit:
                    return examples
    return examples


def _load_titled_context(path: str | Path, source: str, limit: int | None) -> list[QAExample]:
    """HotpotQA and 2WikiMultihopQA share the format: titled sentence lists + supporting facts."""
    examples = []
    for record in _read_json(path):
        passages = [
            _sentences_to_passage(title, sentences, f"{record['_id']}-{i}")
            for i, (title, sentences) in enumerate(record["context"])
        ]
        title_index = {passage.title: i for i, passage in enumerate(passages)}
        supporting = [
            (title_index[title], sentence)
            for title, sentence in record["supporting_facts"]
            if title in title_index and sentence < len(passages[title_index[title]].sentences)
        ]
        examples.append(
            QAExample(
                id=record["_id"],
                question=record["question"],
                answers=[record["answer"]],
                passages=passages,
                gold=sorted({passage for passage, _ in supporting}),
                supporting_sentences=supporting,
                source=source,
            )
        )
        if limit is not None and len(examples) >= limit:
            break
    return examples


def load_hotpotqa(path: str | Path = HOTPOTQA, *, limit: int | None = None) -> list[QAExample]:
    """HotpotQA multi-hop questions, 10 titled paragraphs each, supporting facts as labels."""
    return _load_titled_context(path, "hotpotqa", limit)


def load_2wikimultihopqa(path: str | Path = TWOWIKI, *, limit: int | None = None) -> list[QAExample]:
    """2WikiMultihopQA questions with their context paragraphs and supporting facts."""
    return _load_titled_context(path, "2wikimultihopqa", limit)


def load_musique(path: str | Path = MUSIQUE, *, limit: int | None = None, answerable_only: bool = True) -> list[QAExample]:
    """MuSiQue questions over 20 paragraphs; ``is_supporting`` marks the gold ones."""
    examples = []
    for record in _read_json(path):
        if answerable_only and not record.get("answerable", True):
            continue
        passages = [
            Passage(text=p["paragraph_text"], title=p["title"], id=f"{record['id']}-{p['idx']}") for p in record["paragraphs"]
        ]
        examples.append(
            QAExample(
                id=record["id"],
                question=record["question"],
                answers=[record["answer"], *record.get("answer_aliases", [])],
                passages=passages,
                gold=[i for i, p in enumerate(record["paragraphs"]) if p.get("is_supporting")],
                source="musique",
            )
        )
        if limit is not None and len(examples) >= limit:
            break
    return examples


def load_strategyqa(path: str | Path = STRATEGYQA, *, limit: int | None = None) -> list[QAExample]:
    """StrategyQA yes/no questions; the annotated facts are the (all gold) passages."""
    examples = []
    for record in _read_json(path):
        passages = [
            Passage(text=fact, title=record.get("term", ""), id=f"{record['qid']}-{i}") for i, fact in enumerate(record["facts"])
        ]
        examples.append(
            QAExample(
                id=record["qid"],
                question=record["question"],
                answers=["yes" if record["answer"] else "no"],
                passages=passages,
                gold=list(range(len(passages))),
                source="strategyqa",
            )
        )
        if limit is not None and len(examples) >= limit:
            break
    return examples


def load_corpus(path: str | Path = TWOWIKI_CORPUS) -> list[Passage]:
    """A flat retrieval corpus: a list of ``{"title", "text"}`` records or a title -> text map."""
    raw = _read_json(path)
    items = raw.items() if isinstance(raw, dict) else ((r["title"], r["text"]) for r in raw)
    passages = []
    for i, (title, text) in enumerate(items):
        if isinstance(text, list):
            passages.append(_sentences_to_passage(title, text, str(i)))
        else:
            passages.append(Passage(text=text, title=title, id=str(i)))
    return passages


LOADERS = {
    "squad": load_squad,
    "hotpotqa": load_hotpotqa,
    "musique": load_musique,
    "2wikimultihopqa": load_2wikimultihopqa,
    "strategyqa": load_strategyqa,
}


def load_dataset(name: str, **kwargs: object) -> list[QAExample]:
    """Load a shared QA set by name (see :data:`LOADERS`)."""
    try:
        loader = LOADERS[name]
    except KeyError:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(LOADERS)}") from None
    return loader(**kwargs)  # type: ignore[arg-type]
