"""Rebuild the demo corpus shipped in ``hyco_rag/resources/demo/`` from the shared SQuAD dev set.

The demo needs a small real corpus that installs with the package (no data folder on a user's
machine): whole articles' paragraphs, so retrieval has topically close distractors, and a few
questions from them with their gold answers. Run from the repo root:

    python scripts/build_demo_corpus.py
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hyco_rag.data import SQUAD_DEV, squad_paragraphs
from hyco_rag.results import write_json_atomic

ARTICLES = 6  # whole articles until about 300 paragraphs
QUESTIONS_PER_ARTICLE = 2
OUT = Path(__file__).resolve().parents[1] / "hyco_rag" / "resources" / "demo"


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    passages, questions, titles = [], [], []
    for paragraph in squad_paragraphs(SQUAD_DEV):
        if paragraph.title not in titles:
            if len(titles) == ARTICLES:
                break
            titles.append(paragraph.title)
        passages.append({"id": paragraph.id, "title": paragraph.title.replace("_", " "), "text": paragraph.context})
        asked = sum(q["title"] == paragraph.title for q in questions)
        if asked < QUESTIONS_PER_ARTICLE and paragraph.questions and len(passages) % 7 == 1:
            question, answers = paragraph.questions[0]
            questions.append({"question": question, "answers": sorted(set(answers)), "title": paragraph.title, "passage_id": paragraph.id})
    OUT.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages)
    (OUT / "corpus.jsonl").write_text(lines, encoding="utf-8")
    write_json_atomic(OUT / "questions.json", questions)
    (OUT / "SOURCE.md").write_text(
        "# Demo corpus\n\n"
        f"{len(passages)} paragraphs of {len(titles)} articles ({', '.join(t.replace('_', ' ') for t in titles)}) "
        f"and {len(questions)} of their questions, from SQuAD v1.1 dev (Rajpurkar et al., 2016), "
        "CC BY-SA 4.0. Rebuilt by `scripts/build_demo_corpus.py`.\n",
        encoding="utf-8",
    )
    logging.info("wrote %d passages, %d questions to %s", len(passages), len(questions), OUT)


if __name__ == "__main__":
    main()
