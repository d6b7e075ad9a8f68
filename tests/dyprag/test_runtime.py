"""The served model: modes, per-row deltas in one batch, isolation under exceptions and asyncio,
streaming, empty and over-long passages."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import torch

from hyco_rag.dyprag import (
    DeltaValueError,
    LoRADelta,
    ParameterTranslator,
    ParametricRAG,
    TranslatorConfig,
    deltas_active,
)
from hyco_rag.generation import ChatGenerator, GenerationConfig

from .conftest import assert_bit_identical, hook_count, snapshot

PASSAGES = [
    "Beyonce Knowles was born in Houston, Texas, and rose to fame with Destiny's Child.",
    "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]
QUESTION = "Where was she born?"
CONFIG = GenerationConfig(max_new_tokens=6, batch_size=4)


def random_translator(model, scale: float) -> ParameterTranslator:
    """A translator whose deltas clearly depend on the passage (for isolation tests)."""
    translator = ParameterTranslator(TranslatorConfig.for_model(model, hidden_dim=8))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for head in list(translator.head_a.values()) + list(translator.head_b.values()):
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * scale)
    return translator.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many small per-layer delta ops: on a shared 2-core machine one thread is several times faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def rag(smollm2):
    model, tokenizer = smollm2
    return ParametricRAG(ChatGenerator(model, tokenizer, CONFIG), random_translator(model, 0.2), mode="dyprag")


def test_modes_put_passages_in_the_prompt_or_in_the_weights(rag):
    answers = {mode: rag.answer(QUESTION, PASSAGES[:2], mode=mode) for mode in ("none", "rag", "dyprag", "combine")}
    assert answers["dyprag"].prompt_tokens == answers["none"].prompt_tokens  # no passage tokens
    assert answers["dyprag"].context_tokens == 0 and answers["dyprag"].passages_injected == 2
    assert answers["dyprag"].delta_rank == 4  # two rank-2 passages, concatenated
    assert answers["combine"].prompt_tokens == answers["rag"].prompt_tokens > answers["none"].prompt_tokens + 30
    assert answers["rag"].delta_rank == 0 and answers["rag"].context_tokens == answers["rag"].passage_tokens > 30
    for answer in answers.values():
        assert answer.completion_tokens >= 1 and answer.text
    assert {"encode", "translate", "generate"} <= set(answers["dyprag"].timings)


def test_rows_with_and_without_deltas_in_one_batch(rag):
    prompt = rag.generator.prompt(QUESTION)
    delta = rag.deltas_for(PASSAGES[:1])
    plain = rag.generate_prompts([prompt, prompt], None, CONFIG)
    mixed = rag.generate_prompts([prompt, prompt], [delta, None], CONFIG)
    both = rag.generate_prompts([prompt, prompt], [delta, delta], CONFIG)
    assert mixed[1] == plain[1]  # the row without a delta is untouched by its neighbour's
    assert mixed[0] == both[0]
    assert mixed[0].text != plain[0].text  # and the delta really changes the answer


def test_batched_modes_per_row(rag):
    questions = [QUESTION, "When was it completed?", QUESTION]
    documents = [PASSAGES[:1], PASSAGES[1:2], []]
    batch = rag.answer_batch(questions, documents, mode=["dyprag", "rag", "none"])
    assert [a.mode for a in batch] == ["dyprag", "rag", "none"]
    assert batch[0].delta_rank == 2 and batch[1].delta_rank == 0 and batch[2].delta_rank == 0
    with pytest.raises(ValueError, match="mode must be one of"):
        rag.answer_batch(questions, documents, mode=["dyprag", "bogus", "none"])


def test_exception_mid_generation_leaves_no_hooks_and_identical_weights(rag):
    model = rag.model
    before = snapshot(model)
    calls = {"n": 0}

    def explode(module, args, output):
        calls["n"] += 1
        if calls["n"] == 3:  # the third decoding step
            raise RuntimeError("injected failure")

    handle = model.lm_head.register_forward_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            rag.answer(QUESTION, PASSAGES[:1], mode="dyprag")
    finally:
        handle.remove()
    assert calls["n"] == 3
    assert hook_count(model) == 0 and not deltas_active(model)
    assert_bit_identical(model, before)
    rag.answer(QUESTION, PASSAGES[:1], mode="dyprag")  # and the model serves again
    assert_bit_identical(model, before)


def test_nan_from_the_translator_is_rejected_before_generation(rag):
    model = rag.model
    delta = rag.deltas_for(PASSAGES[:1])
    name = next(iter(delta.factors))
    delta.factors[name][0][0, 0] = float("nan")
    with pytest.raises(DeltaValueError, match="NaN"):
        rag.answer(QUESTION, PASSAGES[:1], mode="dyprag", deltas=delta)
    assert hook_count(model) == 0 and not deltas_active(model)


async def test_concurrent_async_requests_equal_the_sequential_run(rag):
    # One question, three passages: cross-talk between requests would change the answers.
    sequential = [rag.answer(QUESTION, [p], mode="dyprag") for p in PASSAGES]
    assert len({a.text for a in sequential}) >= 2  # the passages really lead to different answers
    concurrent = await asyncio.gather(*(rag.aanswer(QUESTION, [p], mode="dyprag") for p in PASSAGES))
    assert [a.text for a in concurrent] == [a.text for a in sequential]
    assert [a.completion_tokens for a in concurrent] == [a.completion_tokens for a in sequential]


async def test_streaming_sync_and_async(rag):
    expected = rag.answer(QUESTION, PASSAGES[:1], mode="combine").text
    pieces = list(rag.stream(QUESTION, PASSAGES[:1], mode="combine"))
    assert len(pieces) >= 1 and "".join(pieces).strip() == expected
    apieces = [piece async for piece in rag.astream(QUESTION, PASSAGES[:1], mode="combine")]
    assert "".join(apieces).strip() == expected
    assert hook_count(rag.model) == 0


def test_empty_documents_are_ignored(rag):
    closed = rag.answer(QUESTION, [], mode="none")
    empty = rag.answer(QUESTION, ["", "   "], mode="dyprag")
    assert empty.text == closed.text and empty.delta_rank == 0 and empty.passages_injected == 0
    with pytest.raises(ValueError, match="not one string"):
        rag.answer(QUESTION, PASSAGES[0])


def test_compressor_shortens_the_combine_context(rag):
    class FirstSentence:
        def compress(self, query, documents):
            class Result:
                texts = [d.split(",")[0] for d in documents]

            return Result()

    compressed = ParametricRAG(rag.generator, rag.translator, mode="combine", compressor=FirstSentence())
    full = rag.answer(QUESTION, PASSAGES[:1], mode="combine")
    short = compressed.answer(QUESTION, PASSAGES[:1])
    assert short.context_tokens < full.context_tokens and short.delta_rank == full.delta_rank == 2
    with pytest.raises(TypeError, match="compress"):
        ParametricRAG(rag.generator, rag.translator, compressor=object())


def test_passage_longer_than_the_window(tiny_llama):
    model, tokenizer = tiny_llama  # window: 128 tokens
    rag = ParametricRAG(ChatGenerator(model, tokenizer, replace(CONFIG, max_new_tokens=3)), random_translator(model, 0.05))
    long_passage = " ".join(PASSAGES * 6)  # ~250 tokens
    with pytest.raises(ValueError, match="exceeds the model's window of 128"):
        rag.answer(QUESTION, [long_passage], mode="rag")
    answer = rag.answer(QUESTION, [long_passage], mode="dyprag")  # encoded window by window
    assert answer.delta_rank == 2 and answer.passage_tokens > 128


def test_explicit_deltas_and_translator_checks(rag, tiny_llama):
    tiny, tokenizer = tiny_llama
    with pytest.raises(ValueError, match="hidden_size"):
        ParametricRAG(ChatGenerator(tiny, tokenizer), rag.translator)  # translator of another model
    prag_like = rag.deltas_for(PASSAGES[1:2])
    a = rag.answer(QUESTION, PASSAGES[:1], mode="dyprag", deltas=prag_like)
    b = rag.answer(QUESTION, PASSAGES[1:2], mode="dyprag")
    assert a.text == b.text  # the explicit delta, not the passage's, was applied
    assert isinstance(prag_like, LoRADelta)
