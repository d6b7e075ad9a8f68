"""Fixtures for the DyPRAG tests: a tiny random Llama (fast, any shape we need) and helpers.

Most behaviour (hook maths, isolation, save/load checks, training plumbing) is tested on a
2-layer random Llama with the real SmolLM2 tokenizer, so it runs in seconds; the runtime tests
that must show real generation use the session's embedded SmolLM2 (``smollm2`` fixture).
"""

from __future__ import annotations

import pytest
import torch


def make_tiny_llama(seed: int = 0, *, hidden: int = 32, layers: int = 2, window: int = 128, vocab: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyco_rag.models import load_tokenizer

    tokenizer = load_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=vocab or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=window,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_llama():
    """(model, tokenizer): 2 layers, hidden 32, MLP 64, window 128, SmolLM2 tokenizer."""
    return make_tiny_llama(0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_llama):
    """The tiny Llama saved as a local model folder (for the CLI)."""
    model, tokenizer = tiny_llama
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer, to check bit-identity later."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_bit_identical(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"{name} changed"


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
