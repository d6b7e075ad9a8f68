"""QA data: one schema for every shared dataset, and the demo corpus shipped in the package."""

from hyco_rag.data.demo import DemoQuestion, load_demo_corpus, load_demo_questions
from hyco_rag.data.loaders import (
    LOADERS,
    SQUAD_CS224N_DEV_PARAGRAPHS,
    SQUAD_DEV,
    SquadParagraph,
    load_2wikimultihopqa,
    load_corpus,
    load_dataset,
    load_hotpotqa,
    load_musique,
    load_squad,
    load_strategyqa,
    squad_paragraphs,
)
from hyco_rag.data.paths import DataNotFoundError, data_file, shared_data_dir
from hyco_rag.data.schema import AnswerSpan, Passage, QAExample

__all__ = [
    "LOADERS",
    "SQUAD_DEV",
    "SQUAD_CS224N_DEV_PARAGRAPHS",
    "AnswerSpan",
    "DataNotFoundError",
    "DemoQuestion",
    "Passage",
    "QAExample",
    "SquadParagraph",
    "data_file",
    "load_2wikimultihopqa",
    "load_corpus",
    "load_dataset",
    "load_demo_corpus",
    "load_demo_questions",
    "load_hotpotqa",
    "load_musique",
    "load_squad",
    "load_strategyqa",
    "shared_data_dir",
    "squad_paragraphs",
]
