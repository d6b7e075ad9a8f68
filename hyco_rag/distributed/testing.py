"""Factories that Ray replicas import by name (``EngineSpec.factory`` / ``CompressorSpec.factory``)
to serve something small: the Ray tests and the benchmark smoke run a tiny random-weight Llama
(2 layers, hidden 64, the SmolLM2 tokenizer) with a random DyPRAG translator, seeded, so every
process (the test's own reference server and each replica) builds bit-identical weights and
greedy answers can be compared across them.

They live in the package, not under ``tests/``, because a replica imports them by module name.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

__all__ = ["FakeCompressor", "fake_compressor", "tiny_engine"]

_TOKENIZER: Any = None


def _tokenizer() -> Any:
    global _TOKENIZER
    if _TOKENIZER is None:
        from hyco_rag.models import load_tokenizer

        _TOKENIZER = load_tokenizer()
    return copy.deepcopy(_TOKENIZER)


def tiny_engine(seed: int = 0, *, name: str = "tiny-llama", hidden: int = 64, layers: int = 2, **config: Any) -> Any:
    """An :class:`~hyco_rag.engine.Engine` over a seeded random Llama and translator."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig
    from hyco_rag.engine import Engine, EngineConfig

    tokenizer = _tokenizer()
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        initializer_range=0.2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(model_config).eval()
        translator = ParameterTranslator(TranslatorConfig.for_model(model))
    settings = {"max_batch_size": 8, "max_queue": 32, "timeout_s": 60.0, **config}
    return Engine(model, tokenizer, translator, compressor=FakeCompressor(), name=name, config=EngineConfig(**settings))


class FakeCompressor:
    """Keeps the first half of every document's words (any object with ``compress`` works)."""

    def compress(self, query: str, documents: list[str], **budget: Any) -> SimpleNamespace:
        texts = [" ".join(d.split()[: max(1, len(d.split()) // 2)]) for d in documents]
        return SimpleNamespace(
            texts=texts,
            stats={
                "original_tokens": sum(len(d.split()) for d in documents),
                "compressed_tokens": sum(len(t.split()) for t in texts),
            },
        )


def fake_compressor() -> FakeCompressor:
    return FakeCompressor()


def benchmark_engine(
    model: str | None = None,
    translator: str | None = None,
    device: str | None = "cpu",
    threads: int = 1,
    **config: Any,
) -> Any:
    """The engine ``benchmarks/serve_load.py --target ray`` serves on each replica: the named
    model with its translator, or a seeded random one (``translator="random"``, or when the
    shipped one does not load) - what the benchmark's single-process engine serves."""
    import torch

    from hyco_rag.dyprag.translator import ParameterTranslator, TranslatorConfig
    from hyco_rag.engine import Engine, EngineConfig
    from hyco_rag.engine.registry import load_engine_parts
    from hyco_rag.models import load_causal_lm

    torch.set_num_threads(threads)
    name = str(model or "HuggingFaceTB/SmolLM2-135M-Instruct")
    loaded = None
    if translator != "random":
        try:
            parts = load_engine_parts(model, translator, device)
            lm, tokenizer, loaded, name = parts.model, parts.tokenizer, parts.translator, parts.name
        except Exception:  # the shipped translator may be mid-retraining: a random one costs the same
            if translator is not None:
                raise
            lm, tokenizer = load_causal_lm(model, device=device)
    else:
        lm, tokenizer = load_causal_lm(model, device=device)
    if loaded is None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            loaded = ParameterTranslator(TranslatorConfig.for_model(lm))
    return Engine(lm, tokenizer, loaded, name=name, config=EngineConfig(**config))
