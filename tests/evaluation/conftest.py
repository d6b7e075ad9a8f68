"""Shared fixtures for the evaluation tests: the reader tokenizer and MiniLM, loaded once."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def reader_tokenizer():
    from hyco_rag.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def counter(reader_tokenizer):
    from hyco_rag.evaluation import TokenCounter

    return TokenCounter(reader_tokenizer)


@pytest.fixture(scope="session")
def minilm():
    from hyco_rag.models import load_sentence_encoder

    return load_sentence_encoder(device="cpu")


@pytest.fixture(scope="session")
def squad_examples():
    from hyco_rag.data import DataNotFoundError
    from hyco_rag.evaluation.qa_eval import load_examples

    try:
        return load_examples("squad", 3, seed=0, num_distractors=1)
    except (DataNotFoundError, FileNotFoundError) as error:
        pytest.skip(f"shared SQuAD v1.1 dev is absent ({error}); these tests need ../shared/data")
