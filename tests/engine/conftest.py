"""Fixtures for the engine tests: a tiny random Llama with the SmolLM2 tokenizer, a random
translator strong enough to change answers, and an engine over them.

Random weights rarely emit end-of-sequence, so rows run to ``max_tokens`` unless a stop
sequence, a cancellation or a timeout ends them: exactly what the batching tests need.
"""

from __future__ import annotations

import pytest
import torch

from ..dyprag.conftest import assert_bit_identical, hook_count, snapshot

__all__ = ["assert_bit_identical", "hook_count", "snapshot"]


def random_translator(model: torch.nn.Module, scale: float = 0.5, seed: int = 1):
    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig

    translator = ParameterTranslator(TranslatorConfig.for_model(model))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in translator.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return translator.eval()


def make_talkative_llama(seed: int = 3):
    """A 2-layer random Llama whose greedy text varies (a larger init than HF's default, which
    repeats one newline token), with the SmolLM2 tokenizer and a 512-token window."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyco_rag.models import load_tokenizer

    tokenizer = load_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture(scope="module")
def tiny():
    return make_talkative_llama()


@pytest.fixture(scope="module")
def engine(tiny):
    from hyco_rag.engine import Engine, EngineConfig

    model, tokenizer = tiny
    engine = Engine(model, tokenizer, random_translator(model), config=EngineConfig(max_batch_size=8, max_queue=32, timeout_s=60))
    yield engine
    engine.close()
