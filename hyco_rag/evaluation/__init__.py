"""QA evaluation of context compression: baselines, the LongLLMLingua peer client, the
methods x rates loop behind ``benchmarks/compression_qa.py`` / ``hyco-rag eval``, and its plot.

Heavy parts (models, matplotlib) are imported where used.
"""

from hyco_rag.evaluation.baselines import (
    BudgetedCompressor,
    EmbeddingsFilterBaseline,
    RandomWordDrop,
    SentenceSelection,
)
from hyco_rag.evaluation.budget import TokenCounter, split_sentences, split_words, token_budget, truncate_to_budget
from hyco_rag.evaluation.qa_eval import EvalConfig, QAEvaluation, parse_rates, targets

__all__ = [
    "BudgetedCompressor",
    "EmbeddingsFilterBaseline",
    "EvalConfig",
    "QAEvaluation",
    "RandomWordDrop",
    "SentenceSelection",
    "TokenCounter",
    "parse_rates",
    "split_sentences",
    "split_words",
    "targets",
    "token_budget",
    "truncate_to_budget",
]
