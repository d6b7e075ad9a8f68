"""Fixtures: the shipped compressor on CPU, and a tiny random-weight one for very long inputs."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def compressor():
    """The shipped default weights, on CPU in fp32 (deterministic across batch compositions)."""
    from hyco_rag.compression import HyCoCompressor

    return HyCoCompressor.from_pretrained(None, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def reader_tokenizer():
    from hyco_rag.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_compressor():
    """Same code path with a 4-layer, 32-wide random encoder: fast enough for 100k-token inputs."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hyco_rag.compression import CompressorConfig, HyCoCompressor
    from hyco_rag.compression.model import HyCoScorer
    from hyco_rag.models import resolve_sentence_encoder

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_sentence_encoder())
    tokenizer.model_max_length = 1 << 30
    backbone = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                                    num_attention_heads=2, intermediate_size=64))
    config = CompressorConfig(exit_layer=2, head_hidden=16)
    return HyCoCompressor.from_scorer(config, HyCoScorer(config, backbone), tokenizer, device="cpu", dtype=torch.float32)
