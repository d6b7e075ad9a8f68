"""Fixtures for the OpenAI-compatible server tests.

The text of the answers does not matter here, only that it depends on the request and is
reproducible, so the engine serves a tiny random Llama (2 layers, hidden 64, weights drawn
wide enough that greedy decoding emits varied real tokens) with a random DyPRAG translator
and the SmolLM2 tokenizer.  The server runs with uvicorn in a background thread on a free
loopback port; clients talk to it over real HTTP.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: A question and passages whose words differ, so each request's answer is its own.
QUESTION = "What does the passage say about the river?"
PASSAGES = [
    "The Rhone river flows through Lyon and reaches the Mediterranean near Marseille.",
    "The Danube crosses ten countries, more than any other river in the world.",
    "The Thames runs through London; its tidal stretch reaches Teddington Lock.",
    "The Amazon carries more water than the next seven largest rivers together.",
    "The Nile was long held to be the longest river, at about 6,650 kilometres.",
    "The Mekong rises on the Tibetan Plateau and ends in a delta in Vietnam.",
]


def make_tiny_llama(seed: int = 0, *, hidden: int = 64, layers: int = 2, window: int = 1024):
    """A random Llama with the SmolLM2 vocabulary (tokenizer loaded by the caller)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=window,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        initializer_range=0.2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    return model, copy.deepcopy(tokenizer)


_TOKENIZER = None


def _tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from hyco_rag.models import load_tokenizer

        _TOKENIZER = load_tokenizer()
    return _TOKENIZER


def make_engine(seed: int = 0, *, name: str = "tiny-llama", compressor=None, soft_tokens: int | None = None, **config):
    """An engine over a fresh tiny Llama with a random translator (seeded) and, with
    ``soft_tokens``, a random hybrid adapter making that many soft tokens (else none: the
    hybrid modes are refused, as no adapter is shipped for this model)."""
    from hyco_rag.dyprag.testing import random_hybrid_adapter
    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig
    from hyco_rag.engine import Engine, EngineConfig

    model, tokenizer = make_tiny_llama(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        translator = ParameterTranslator(TranslatorConfig.for_model(model))
    hybrid = random_hybrid_adapter(model, num_soft_tokens=soft_tokens, seed=seed) if soft_tokens is not None else None
    settings = {"max_batch_size": 8, "max_queue": 32, "timeout_s": 60.0, **config}
    return Engine(model, tokenizer, translator, compressor=compressor, name=name, config=EngineConfig(**settings), hybrid=hybrid)


class FakeCompressor:
    """Keeps the first half of every document's words (any object with ``compress`` works)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], dict]] = []

    def compress(self, query, documents, **budget):
        from types import SimpleNamespace

        self.calls.append((query, list(documents), dict(budget)))
        texts = [" ".join(d.split()[: max(1, len(d.split()) // 2)]) for d in documents]
        return SimpleNamespace(
            texts=texts,
            stats={
                "original_tokens": sum(len(d.split()) for d in documents),
                "compressed_tokens": sum(len(t.split()) for t in texts),
            },
        )


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def engine():
    """The shared tiny engine (batch 8, queue 32)."""
    engine = make_engine(0, compressor=FakeCompressor())
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def server(engine):
    """The default app over ``engine`` (mode combine, no API key), on a free loopback port."""
    from hyco_rag.server import BackgroundServer, create_app

    with BackgroundServer(create_app(engine, default_mode="combine", max_tokens_limit=256)) as running:
        yield running


@pytest.fixture(scope="session")
def base_url(server) -> str:
    return server.base_url + "/v1"


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_clean(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    """No hooks on any module, no deltas marked active, every tensor bit-identical."""
    from hyco_rag.dyprag.injection import deltas_active

    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks == 0, f"{hooks} hooks left on the model"
    assert not deltas_active(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"{name} changed"
