"""`llama_index.llms.hyco.HyCoLLM` as a thin client of the serving engine: per-call passages, the
eight modes, streaming, real async, batching, cancellation, isolation, the missing-passages warning.

All generations are real (embedded SmolLM2-135M-Instruct on CPU) and go through LlamaIndex's
own callback machinery.  `Settings.llm` is set to the HyCoLLM under test and restored after,
so nothing can fall back to a hosted LLM.  One engine serves the whole process
(:func:`hyco_rag.dyprag.testing.served_engine`: SmolLM2 with a "strong" random translator whose
deltas visibly change the answer passage by passage, so the isolation checks can fail, and that
never depends on the shipped translator; with a random hybrid adapter for the ``hybrid`` modes);
an engine without a translator uses a tiny random Llama.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from hyco_rag.dyprag import testing
from hyco_rag.dyprag.testing import BANANA, EIFFEL, QUESTION, SOFT_TOKENS, TESLA, strong_translator_dir, weights_digest
from hyco_rag.engine import MODE_NAMES, Engine, SamplingParams
from hyco_rag.engine.registry import engine_count
from llama_index.core import Settings
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.llms import LLM, CustomLLM
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.llms.hyco import (
    DocumentBinding,
    HyCoLLM,
    PassagesMissingWarning,
    bind_documents,
    current_binding,
    documents_bound,
    release_binding,
)
from llama_index.llms.hyco import base as hyco_base

MAX_TOKENS = 5


_one_thread, engine = testing.engine_fixtures()


@pytest.fixture(autouse=True)
def _fresh_binding() -> Iterator[None]:
    """Sync tests share the main thread's context: start each without a binding, restore after."""
    token = hyco_base._BINDING.set(None)
    yield
    hyco_base._BINDING.reset(token)


@pytest.fixture
def llm(engine: Engine) -> Iterator[HyCoLLM]:
    previous = Settings._llm
    model = HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS, mode="rag")
    Settings.llm = model
    yield model
    Settings._llm = previous


@pytest.fixture
def strong(engine: Engine) -> HyCoLLM:
    return HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS, mode="dyprag")


@pytest.fixture(scope="module")
def tiny_parts() -> tuple[Any, Any]:
    """A 2-layer random Llama with the SmolLM2 tokenizer (mechanics only)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyco_rag.models import load_tokenizer

    tokenizer = load_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
    return model, tokenizer


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def engine_is_idle(engine: Engine) -> bool:
    from hyco_rag.dyprag.injection import deltas_active

    return engine.running == 0 and engine.queue_depth == 0 and not deltas_active(engine.model)


# --------------------------------------------------------------------------- construction


def test_package_exports() -> None:
    import llama_index.llms.hyco as package

    assert set(package.__all__) == {
        "DocumentBinding",
        "HyCoLLM",
        "PassagesMissingWarning",
        "bind_documents",
        "current_binding",
        "documents_bound",
        "release_binding",
    }
    assert all(getattr(package, name) is not None for name in package.__all__)


def test_is_a_custom_llm_and_its_metadata_needs_no_weights() -> None:
    assert issubclass(HyCoLLM, CustomLLM) and issubclass(HyCoLLM, LLM)
    before = engine_count()
    llm = HyCoLLM(model="smollm2-135m-instruct", max_new_tokens=12)
    meta = llm.metadata
    assert (meta.context_window, meta.num_output, meta.is_chat_model, meta.is_function_calling_model) == (8192, 12, True, False)
    assert meta.model_name == "smollm2-135m-instruct"
    assert engine_count() == before  # the config was read, no model loaded
    assert HyCoLLM(context_window=2048).metadata.context_window == 2048


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(
        ValidationError, match="mode must be one of none, rag, hyco, dyprag, combine, combine-hyco, hybrid, combine-hybrid"
    ):
        HyCoLLM(mode="bogus")
    with pytest.raises(ValidationError, match="mode must be one of"):
        HyCoLLM(mode="combine_hyco")  # one spelling everywhere
    assert [HyCoLLM(mode=m).mode for m in MODE_NAMES] == list(MODE_NAMES)
    with pytest.raises(ValidationError, match="max_new_tokens"):
        HyCoLLM(max_new_tokens=0)
    with pytest.raises(ValidationError, match="temperature"):
        HyCoLLM(temperature=-0.5)
    with pytest.raises(ValidationError, match="compressor"):
        HyCoLLM(compressor="first-sentence")
    with pytest.raises(ValidationError, match="engine must be a hyco_rag.engine.Engine"):
        HyCoLLM(engine=object())
    with pytest.raises(ValueError, match="non-empty query"):
        DocumentBinding(" ", ())


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_complete_answers_like_the_engine(engine: Engine, mode: str) -> None:
    compressor = FirstSentence()
    strong = HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS, compressor=compressor)
    nodes = [NodeWithScore(node=TextNode(text=EIFFEL, metadata={"title": "Eiffel"}), score=0.9), TESLA]
    response = strong.complete(QUESTION, documents=nodes, mode=mode)
    core = engine.answer(
        QUESTION, [EIFFEL, TESLA], mode=mode, sampling=SamplingParams(max_tokens=MAX_TOKENS), compressor=compressor
    )
    assert response.text == core.text
    stats = response.additional_kwargs
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (
        core.completion.prompt_tokens,
        core.completion.completion_tokens,
    )
    assert (stats["context_tokens"], stats["passage_tokens"]) == (core.request.context_tokens, core.request.passage_tokens)
    deltas = mode in ("dyprag", "combine", "combine-hyco", "combine-hybrid")
    assert stats["passages_injected"] == core.request.passages_injected == (2 if deltas else 0)
    assert stats["delta_rank"] == core.request.delta_rank and (stats["delta_rank"] > 0) == deltas
    soft = mode in ("hybrid", "combine-hybrid")
    assert stats["soft_tokens"] == core.request.soft_tokens == (SOFT_TOKENS if soft else 0)
    assert stats["mode"] == mode and stats["finish_reason"] in ("stop", "length")
    compressed = mode in ("hyco", "combine-hyco", "hybrid", "combine-hybrid")
    assert (0 < stats["context_tokens"] < stats["passage_tokens"]) == compressed
    assert response.raw["usage"]["total_tokens"] == core.completion.total_tokens


def test_chat_with_documents_keeps_the_conversation(llm: HyCoLLM) -> None:
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="Answer in one word."),
        ChatMessage(role=MessageRole.USER, content="Hi"),
        ChatMessage(role=MessageRole.ASSISTANT, content="Hello!"),
        ChatMessage(role=MessageRole.USER, content=QUESTION),
    ]
    response = llm.chat(messages, documents=[EIFFEL], mode="rag")
    assert response.message.role == MessageRole.ASSISTANT and response.message.content
    assert response.additional_kwargs["context_tokens"] > 0
    request = llm._prepare(hyco_base._chat_dicts(messages), None, [EIFFEL], "rag", None)
    prompt = request.prompt
    assert prompt.index("Answer in one word.") < prompt.index("Hello!") < prompt.index(EIFFEL) < prompt.rindex(QUESTION)
    single = llm.chat([ChatMessage(role=MessageRole.USER, content=QUESTION)], documents=[EIFFEL], mode="rag")
    assert single.message.content == llm.complete(QUESTION, documents=[EIFFEL], mode="rag").text


def test_without_documents_it_is_a_plain_llm(llm: HyCoLLM) -> None:
    response = llm.complete("Say hello.")
    assert response.text and response.additional_kwargs["passages_injected"] == 0
    assert response.additional_kwargs["documents"] == 0
    formatted = engine_prompt = llm._engine().ask("Say hello.", [], mode="rag").prompt
    assert engine_prompt
    raw = llm.complete(formatted, formatted=True)  # an already rendered prompt goes in verbatim
    assert raw.additional_kwargs["prompt_tokens"] == llm.complete("Say hello.", documents=[]).additional_kwargs["prompt_tokens"]


# --------------------------------------------------------------------------- streaming and async


@pytest.mark.parametrize("mode", ["rag", "dyprag"])
def test_stream_complete_yields_cumulative_text_and_deltas(llm: HyCoLLM, mode: str) -> None:
    whole = llm.complete(QUESTION, documents=[EIFFEL], mode=mode)
    responses = list(llm.stream_complete(QUESTION, documents=[EIFFEL], mode=mode))
    assert len(responses) > (2 if mode == "rag" else 1)  # piece by piece (rag answers are sentences)
    text = ""
    for response in responses:
        text += response.delta or ""
        assert response.text == text  # cumulative text, delta = the new piece
    assert text == whole.text
    assert responses[-1].additional_kwargs["prompt_tokens"] == whole.additional_kwargs["prompt_tokens"]
    assert [r for r in responses if r.additional_kwargs] == [responses[-1]]  # stats once, at the end
    chat = list(llm.stream_chat([ChatMessage(role=MessageRole.USER, content=QUESTION)], documents=[EIFFEL], mode=mode))
    assert chat[-1].message.content == whole.text
    assert "".join(r.delta or "" for r in chat) == whole.text


def test_stop_sequences_cut_the_answer_the_same_way_streamed_or_not(engine: Engine) -> None:
    unstopped_response = HyCoLLM(engine=engine, max_new_tokens=10).complete(QUESTION, documents=[EIFFEL], mode="rag")
    unstopped = unstopped_response.text
    words = unstopped.split()
    assert len(words) >= 3, words
    stop = next(" " + w for w in words[len(words) // 2 :] + words[1:] if " " + w in unstopped)  # a generated word
    llm = HyCoLLM(engine=engine, max_new_tokens=10, stop=[stop, "\n"])
    stopped = llm.complete(QUESTION, documents=[EIFFEL], mode="rag")
    whole = stopped.text
    assert whole == unstopped[: unstopped.index(stop)].rstrip() and whole
    # the engine stopped generating there (finish "stop"), it did not run on to max_new_tokens
    assert stopped.additional_kwargs["finish_reason"] == "stop"
    assert stopped.additional_kwargs["completion_tokens"] < unstopped_response.additional_kwargs["completion_tokens"]
    streamed = list(llm.stream_complete(QUESTION, documents=[EIFFEL], mode="rag"))
    assert streamed[-1].text == whole == "".join(r.delta or "" for r in streamed)


async def test_async_methods_equal_the_sync_ones(llm: HyCoLLM) -> None:
    expected = llm.complete(QUESTION, documents=[EIFFEL], mode="dyprag").text
    assert (await llm.acomplete(QUESTION, documents=[EIFFEL], mode="dyprag")).text == expected
    pieces = [r async for r in await llm.astream_complete(QUESTION, documents=[EIFFEL], mode="dyprag")]
    assert pieces[-1].text == expected and "".join(r.delta or "" for r in pieces) == expected
    message = [ChatMessage(role=MessageRole.USER, content=QUESTION)]
    assert (await llm.achat(message, documents=[EIFFEL], mode="dyprag")).message.content == expected
    chunks = [r async for r in await llm.astream_chat(message, documents=[EIFFEL], mode="dyprag")]
    assert chunks[-1].message.content == expected


async def test_async_calls_do_not_block_the_event_loop(llm: HyCoLLM) -> None:
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    await llm.acomplete(QUESTION, documents=[EIFFEL], mode="dyprag")
    async for _ in await llm.astream_complete(QUESTION, documents=[EIFFEL], mode="dyprag"):
        pass
    elapsed = time.perf_counter() - start
    done.set()
    await task
    assert ticks >= max(5, int(elapsed / 0.01 * 0.1)), (ticks, elapsed)


def test_token_counting_handler_sees_the_usage(engine: Engine) -> None:
    counter = TokenCountingHandler()
    llm = HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS, callback_manager=CallbackManager([counter]))
    response = llm.complete(QUESTION, documents=[EIFFEL], mode="rag")
    assert counter.prompt_llm_token_count == response.additional_kwargs["prompt_tokens"]
    assert counter.completion_llm_token_count == response.additional_kwargs["completion_tokens"]


# --------------------------------------------------------------------------- isolation


def test_passages_act_on_their_own_generation_only(strong: HyCoLLM, engine: Engine) -> None:
    from hyco_rag.dyprag.injection import deltas_active

    before = weights_digest(engine.model)
    closed = strong.complete(QUESTION, documents=[EIFFEL], mode="none").text
    eiffel = strong.complete(QUESTION, documents=[EIFFEL], mode="dyprag").text
    banana = strong.complete(QUESTION, documents=[BANANA], mode="dyprag").text
    assert len({closed, eiffel, banana}) == 3
    assert strong.complete(QUESTION, documents=[EIFFEL], mode="none").text == closed
    assert not deltas_active(engine.model)
    assert weights_digest(engine.model) == before


class _BatchSizes:
    """An engine listener that records the batch size of every decode step."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_request(self, *args: Any) -> None:
        pass

    def on_step(self, batch_size: int, queue_depth: int) -> None:
        self.sizes.append(batch_size)

    def on_delta_cache(self, hits: int, misses: int) -> None:
        pass


async def test_concurrent_async_requests_equal_the_sequential_run_and_are_batched(engine: Engine) -> None:
    strong = HyCoLLM(engine=engine, max_new_tokens=12)
    requests = [([EIFFEL], "dyprag"), ([BANANA], "dyprag"), ([TESLA, EIFFEL], "combine")]
    sequential = [strong.complete(QUESTION, documents=d, mode=m).text for d, m in requests]
    assert len(set(sequential)) == len(sequential)

    async def streamed(documents: list[str], mode: str) -> str:
        return [r async for r in await strong.astream_complete(QUESTION, documents=documents, mode=mode)][-1].text

    recorder = _BatchSizes()
    engine.add_listener(recorder)
    try:
        results = await asyncio.gather(*(strong.acomplete(QUESTION, documents=d, mode=m) for d, m in requests))
        texts = await asyncio.gather(*(streamed(d, m) for d, m in requests))
    finally:
        engine.listeners.remove(recorder)
    assert [r.text for r in results] == sequential
    assert texts == sequential
    assert max(recorder.sizes) > 1, recorder.sizes  # the three calls shared decode steps
    assert engine.stats.max_batch > 1


def test_closing_a_stream_early_frees_the_engine_slot(engine: Engine) -> None:
    llm = HyCoLLM(engine=engine, max_new_tokens=200, mode="dyprag")
    finished_before = engine.stats.requests.get("ok", 0)
    for stream in (
        llm.stream_complete("Write a long story about the tower.", documents=[EIFFEL]),
        llm.stream_chat([ChatMessage(role=MessageRole.USER, content="Write a long story.")], documents=[BANANA]),
    ):
        next(stream)
        stream.close()
        assert wait_until(lambda: engine_is_idle(engine), timeout=5.0), (engine.running, engine.queue_depth)
    assert engine.stats.requests.get("ok", 0) == finished_before  # dropped, not run to the end
    assert llm.complete(QUESTION, documents=[EIFFEL], mode="none").text


async def test_cancelled_async_calls_free_the_engine_slot(engine: Engine) -> None:
    llm = HyCoLLM(engine=engine, max_new_tokens=200, mode="dyprag")
    cancelled_before = engine.stats.requests.get("cancelled", 0)
    task = asyncio.create_task(llm.acomplete("Write a long story about the tower.", documents=[EIFFEL]))
    assert await asyncio.to_thread(wait_until, lambda: engine.running == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(wait_until, lambda: engine_is_idle(engine), 5.0)
    stream = await llm.astream_complete("Write a long story about the tower.", documents=[BANANA])
    await stream.__anext__()
    await stream.aclose()
    assert await asyncio.to_thread(wait_until, lambda: engine_is_idle(engine), 5.0)
    assert engine.stats.requests.get("cancelled", 0) >= cancelled_before + 2


class FirstSentence:
    """A core-protocol compressor (``.compress(query, documents, **budget).texts``): keeps sentence one."""

    class Result:
        def __init__(self, texts: list[str]) -> None:
            self.texts = texts

    def compress(self, query: str, documents: list[str], **budget: Any) -> FirstSentence.Result:
        return self.Result([d.split(". ")[0] + "." for d in documents])


class FirstSentenceNoBudget:
    """A core-protocol compressor that takes no budget keywords."""

    def compress(self, query: str, documents: list[str]) -> FirstSentence.Result:
        return FirstSentence.Result([d.split(". ")[0] + "." for d in documents])


@pytest.mark.parametrize("compressor", [FirstSentence(), FirstSentenceNoBudget()], ids=["budget", "no-budget"])
def test_compressing_modes_put_the_compressed_passages_in_the_prompt(engine: Engine, compressor: Any) -> None:
    llm = HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS, compressor=compressor)
    stats = llm.complete(QUESTION, documents=[EIFFEL, TESLA], mode="combine-hyco").additional_kwargs
    assert 0 < stats["context_tokens"] < stats["passage_tokens"]
    assert stats["passages_injected"] == 2 and "compress" in stats["timings"]
    prompt = llm._prepare([{"role": "user", "content": QUESTION}], None, [EIFFEL], "hyco", None).prompt
    assert "wrought-iron" in prompt and "1887 to 1889" not in prompt
    combine = llm.complete(QUESTION, documents=[EIFFEL, TESLA], mode="combine").additional_kwargs
    assert combine["context_tokens"] == combine["passage_tokens"]  # combine places them uncompressed


def test_hybrid_modes_report_their_soft_tokens_streamed_or_not(engine: Engine) -> None:
    llm = HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS, compressor=FirstSentence(), mode="hybrid")
    response = llm.complete(QUESTION, documents=[EIFFEL, TESLA])
    stats = response.additional_kwargs
    assert stats["mode"] == "hybrid" and stats["soft_tokens"] == SOFT_TOKENS and stats["passages_injected"] == 0
    hyco = llm.complete(QUESTION, documents=[EIFFEL, TESLA], mode="hyco").additional_kwargs
    assert stats["context_tokens"] == hyco["context_tokens"] + SOFT_TOKENS  # the same kept text, after the soft tokens
    assert "soft" in stats["timings"] and "soft" not in hyco["timings"]
    streamed = list(llm.stream_complete(QUESTION, documents=[EIFFEL, TESLA]))
    assert streamed[-1].text == response.text and streamed[-1].additional_kwargs["soft_tokens"] == SOFT_TOKENS
    combined = llm.chat([ChatMessage(role=MessageRole.USER, content=QUESTION)], documents=[EIFFEL], mode="combine-hybrid")
    assert combined.additional_kwargs["soft_tokens"] == SOFT_TOKENS and combined.additional_kwargs["passages_injected"] == 1


def test_hybrid_modes_need_the_core_prompt_of_a_binding(engine: Engine) -> None:
    llm = HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS, compressor=FirstSentence(), mode="hybrid")
    with pytest.raises(ValueError, match=r"mode 'hybrid' .* cannot keep the synthesizer's prompt.*use prompt='core'"):
        DocumentBinding(QUESTION, (EIFFEL,), mode="hybrid", prompt="synthesizer")
    prompt = f"Context information is below.\n---\n\n---\nQuery: {QUESTION}\nAnswer: "

    def synthesizer_style() -> None:
        bind_documents(QUESTION, [EIFFEL], prompt="synthesizer")  # no mode: the LLM's (hybrid) applies at call time
        with pytest.raises(ValueError, match="mode 'hybrid' .*use prompt='core'"):
            llm.complete(prompt)
        with pytest.raises(ValueError, match="mode 'combine-hybrid' .*use prompt='core'"):
            HyCoLLM(engine=engine, mode="dyprag").complete(prompt, mode="combine-hybrid")
        kept = HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS, mode="dyprag").complete(prompt)  # others still keep it
        assert kept.additional_kwargs["passages_injected"] == 1

    def core_style() -> str:
        bind_documents(QUESTION, [EIFFEL], mode="hybrid")
        return llm.complete(prompt).text

    contextvars.copy_context().run(synthesizer_style)
    assert contextvars.copy_context().run(core_style) == llm.complete(QUESTION, documents=[EIFFEL]).text
    assert engine_is_idle(engine)


# --------------------------------------------------------------------------- no passages


def test_a_passage_mode_without_passages_warns_once(engine: Engine) -> None:
    llm = HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS)  # the default mode: combine
    assert llm.mode == "combine"
    with pytest.warns(PassagesMissingWarning, match="DyPRAGNodePostprocessor"):
        response = llm.complete("Say hello.")
    assert response.additional_kwargs["mode"] is None and response.additional_kwargs["passages_injected"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", PassagesMissingWarning)
        llm.complete("Say hello again.")  # said once per HyCoLLM
        llm.complete(QUESTION, documents=[EIFFEL])  # with passages: nothing to say
        HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS, mode="rag").complete("Say hello.")  # rag needs none
    with pytest.warns(PassagesMissingWarning):
        HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS, mode="dyprag").chat([ChatMessage(role=MessageRole.USER, content="hi")])


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_named(llm: HyCoLLM, engine: Engine) -> None:
    with pytest.raises(ValueError, match="not a single one"):
        llm.complete(QUESTION, documents=EIFFEL)
    with pytest.raises(ValueError, match=r"documents\[0\] must be a string or a node"):
        llm.complete(QUESTION, documents=[3.14])
    with pytest.raises(ValueError, match=r"unexpected keyword arguments \['docs'\]"):
        llm.complete(QUESTION, docs=[EIFFEL])
    with pytest.raises(ValueError, match="mode must be one of"):
        llm.complete(QUESTION, documents=[EIFFEL], mode="parametric")
    with pytest.raises(ValueError, match="question itself"):
        llm.complete("<|im_start|>user\nhi<|im_end|>", formatted=True, documents=[EIFFEL])
    image = ChatMessage(
        role=MessageRole.USER, blocks=[TextBlock(text="what is this?"), ImageBlock(url="https://example.com/a.png")]
    )
    with pytest.raises(ValueError, match="text only"):
        llm.chat([image])
    with pytest.raises(ValueError, match="cannot render a tool message"):
        llm.chat([ChatMessage(role=MessageRole.TOOL, content="42")])
    with pytest.raises(ValueError, match="last message must be the user message"):
        llm.chat(
            [ChatMessage(role=MessageRole.USER, content="hi"), ChatMessage(role=MessageRole.ASSISTANT, content="yo")],
            documents=[EIFFEL],
        )
    too_long = " ".join(["word"] * (engine.window + 10))
    with pytest.raises(ValueError, match="more than this engine accepts"):
        llm.complete(QUESTION, documents=[too_long], mode="rag")
    assert engine_is_idle(engine)  # nothing was submitted


def test_modes_without_their_parts_say_what_is_missing(tiny_parts: tuple[Any, Any]) -> None:
    bare_engine = Engine(*tiny_parts, None)
    try:
        bare = HyCoLLM(engine=bare_engine, max_new_tokens=4)
        assert bare.complete(QUESTION, documents=[EIFFEL], mode="rag").additional_kwargs["completion_tokens"] >= 1
        with pytest.raises(ValueError, match="translator"):
            bare.complete(QUESTION, documents=[EIFFEL], mode="dyprag")
        with pytest.raises(ValueError, match="'hybrid' and 'combine-hybrid' need a hybrid adapter"):
            bare.complete(QUESTION, documents=[EIFFEL], mode="hybrid")  # none given, none shipped for it
    finally:
        bare_engine.close()


def test_by_name_it_serves_the_shared_engine(engine: Engine) -> None:
    by_name = HyCoLLM(model="smollm2", translator=strong_translator_dir(), max_new_tokens=4, mode="dyprag")
    count = engine_count()
    response = by_name.complete(QUESTION, documents=[EIFFEL])
    assert by_name._engine() is engine and engine_count() == count  # an alias: the same engine, nothing loaded
    assert response.additional_kwargs["passages_injected"] == 1
    assert response.text == HyCoLLM(engine=engine, max_new_tokens=4, mode="dyprag").complete(QUESTION, documents=[EIFFEL]).text


# --------------------------------------------------------------------------- bindings


def test_a_binding_serves_only_prompts_of_its_query(strong: HyCoLLM) -> None:
    closed = strong.complete(QUESTION, documents=[], mode="none").text
    injected = strong.complete(QUESTION, documents=[EIFFEL], mode="dyprag").text
    other = "Where do bananas grow?"
    plain_other = HyCoLLM(engine=strong.engine, max_new_tokens=MAX_TOKENS, mode="rag").complete(other).text

    def run() -> tuple[str, str, str, str]:
        bind_documents(QUESTION, [EIFFEL], mode="dyprag")
        assert current_binding() is not None and current_binding().documents == (EIFFEL,)
        templated = f"Context information is below.\n---\n\n---\nQuery: {QUESTION}\nAnswer: "
        longer = f"{QUESTION} Answer in French."  # contains the query, but is another question
        with pytest.warns(PassagesMissingWarning):
            unrelated = strong.complete(other).text
        return (
            strong.complete(templated).text,
            unrelated,
            strong.complete(QUESTION, documents=[], mode="none").text,
            strong.complete(longer).text,
        )

    bound, unrelated, explicit, longer = contextvars.copy_context().run(run)
    assert bound == injected  # the synthesizer-style prompt of the query got its passages, core prompt
    assert unrelated == plain_other  # another query's prompt did not
    assert explicit == closed  # explicit documents= win over the binding
    assert longer != injected  # a prompt that only contains the query is not matched
    assert current_binding() is None  # the binding stayed in the context that made it


def test_bindings_can_be_released(strong: HyCoLLM) -> None:
    token = bind_documents(QUESTION, [EIFFEL])
    assert current_binding() is not None
    release_binding(token)
    assert current_binding() is None
    with documents_bound(QUESTION, [BANANA], mode="dyprag") as binding:
        assert current_binding() is binding and binding.documents == (BANANA,)
        assert binding.matches(f"Query: {QUESTION}\nAnswer:") and not binding.matches(f"Query: {QUESTION} Why?")
    assert current_binding() is None
    with pytest.raises(ValueError, match="mode must be one of"):
        DocumentBinding(QUESTION, (), mode="parametric")


def test_bindings_do_not_cross_threads(strong: HyCoLLM) -> None:
    seen: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def worker(name: str, documents: list[str]) -> None:
        bind_documents(QUESTION, documents, mode="dyprag")
        barrier.wait()  # both bound before either generates
        seen[name] = strong.complete(f"Query: {QUESTION}").text

    threads = [
        threading.Thread(target=worker, args=("eiffel", [EIFFEL])),
        threading.Thread(target=worker, args=("banana", [BANANA])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen["eiffel"] == strong.complete(QUESTION, documents=[EIFFEL], mode="dyprag").text
    assert seen["banana"] == strong.complete(QUESTION, documents=[BANANA], mode="dyprag").text
    assert seen["eiffel"] != seen["banana"]
