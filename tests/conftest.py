"""Shared fixtures: the embedded default models, loaded once per test session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton reads TRITON_INTERPRET when it is first imported, and some test modules collected before
# tests/kernels import it (through transformers): without a GPU the kernels only run under the
# interpreter, so switch it on before anything else is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct on CPU, fp32."""
    from hyco_rag.models import load_causal_lm

    return load_causal_lm(device="cpu")


@pytest.fixture(scope="session")
def minilm():
    """The embedded all-MiniLM-L6-v2 SentenceTransformer on CPU."""
    from hyco_rag.models import load_sentence_encoder

    return load_sentence_encoder(device="cpu")


@pytest.fixture(scope="session")
def shared_data():
    """The shared QA data folder; tests that need it skip with the reason when it is absent."""
    from hyco_rag.data import DataNotFoundError, shared_data_dir

    try:
        return shared_data_dir()
    except DataNotFoundError as error:
        pytest.skip(f"shared QA data not available: {error}")
