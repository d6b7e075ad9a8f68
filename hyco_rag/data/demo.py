"""The small real corpus that ships inside the package for ``hyco-rag demo``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from hyco_rag.data.schema import Passage


@dataclass(frozen=True)
class DemoQuestion:
    question: str
    answers: list[str]
    passage_id: str


def _resource(name: str) -> str:
    return resources.files("hyco_rag").joinpath("resources").joinpath("demo").joinpath(name).read_text(encoding="utf-8")


def load_demo_corpus() -> list[Passage]:
    """346 SQuAD v1.1 dev paragraphs of 6 articles (see resources/demo/SOURCE.md)."""
    records = [json.loads(line) for line in _resource("corpus.jsonl").splitlines() if line.strip()]
    return [Passage(text=r["text"], title=r["title"], id=r["id"]) for r in records]


def load_demo_questions() -> list[DemoQuestion]:
    """Questions about the demo corpus, with their gold answers and gold passage id."""
    return [DemoQuestion(q["question"].strip(), q["answers"], q["passage_id"]) for q in json.loads(_resource("questions.json"))]
