"""DyPRAG training: stage 1 collects per-passage PRAG LoRAs, stage 2 trains the translator.

CLI: ``hyco-rag train prag`` and ``hyco-rag train translator`` (see :mod:`hyco_rag.cli.train_dyprag`).
"""

from hyco_rag.dyprag.training.data import (
    SEQUENCE_KINDS,
    SequenceBuilder,
    TrainingPassage,
    TrainingSequence,
    load_training_passages,
)
from hyco_rag.dyprag.training.prag import PragConfig, collect_prag_pairs, train_group_loras, train_passage_lora
from hyco_rag.dyprag.training.shards import PairShard, load_pairs
from hyco_rag.dyprag.training.translator_training import TranslatorTrainConfig, evaluate_pairs, train_translator

__all__ = [
    "SEQUENCE_KINDS",
    "PairShard",
    "PragConfig",
    "SequenceBuilder",
    "TrainingPassage",
    "TrainingSequence",
    "TranslatorTrainConfig",
    "collect_prag_pairs",
    "evaluate_pairs",
    "load_pairs",
    "load_training_passages",
    "train_group_loras",
    "train_passage_lora",
    "train_translator",
]
