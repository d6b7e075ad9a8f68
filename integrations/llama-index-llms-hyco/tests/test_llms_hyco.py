"""`llama_index.llms.hyco.HyCoLLM`: per-call passages, modes, streaming, real async, isolation.

All generations are real (embedded SmolLM2-135M-Instruct on CPU) and go through LlamaIndex's
own callback machinery.  `Settings.llm` is set to the HyCoLLM under test and restored after,
so nothing can fall back to a hosted LLM.  Two translators: the shipped one (or, while none is
shipped, a random one of near-zero deltas: enough for plumbing), and a "strong" random one whose
deltas visibly change the answer passage by passage, so the isolation checks can fail.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core import Settings
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.llms import LLM, CustomLLM
from llama_index.core.schema import NodeWithScore, TextNode
from pydantic import ValidationError

from llama_index.llms.hyco import DocumentBinding, HyCoLLM, bind_documents, current_binding
from llama_index.llms.hyco import base as hyco_base

from hyco_rag.dyprag import serving, testing
from hyco_rag.dyprag.testing import BANANA, EIFFEL, QUESTION, TESLA, weights_digest

MAX_TOKENS = 5


_one_thread, runtime, strong_runtime = testing.runtime_fixtures()


@pytest.fixture
def llm(runtime: Any) -> Iterator[HyCoLLM]:
    previous = Settings._llm
    model = HyCoLLM(runtime=runtime, max_new_tokens=MAX_TOKENS)
    Settings.llm = model
    yield model
    Settings._llm = previous


@pytest.fixture
def strong(strong_runtime: Any) -> HyCoLLM:
    return HyCoLLM(runtime=strong_runtime, max_new_tokens=MAX_TOKENS)


# --------------------------------------------------------------------------- construction


def test_package_exports() -> None:
    import llama_index.llms.hyco as package

    assert set(package.__all__) == {"DocumentBinding", "HyCoLLM", "bind_documents", "current_binding"}
    assert all(getattr(package, name) is not None for name in package.__all__)


def test_is_a_custom_llm_and_its_metadata_needs_no_weights() -> None:
    assert issubclass(HyCoLLM, CustomLLM) and issubclass(HyCoLLM, LLM)
    before = serving.served_runtime_count()
    llm = HyCoLLM(model="smollm2-135m-instruct", max_new_tokens=12)
    meta = llm.metadata
    assert (meta.context_window, meta.num_output, meta.is_chat_model, meta.is_function_calling_model) == (8192, 12, True, False)
    assert meta.model_name == "smollm2-135m-instruct"
    assert serving.served_runtime_count() == before  # the config was read, no model loaded
    assert HyCoLLM(context_window=2048).metadata.context_window == 2048


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValidationError, match="mode must be one of"):
        HyCoLLM(mode="bogus")
    with pytest.raises(ValidationError, match="max_new_tokens"):
        HyCoLLM(max_new_tokens=0)
    with pytest.raises(ValidationError, match="temperature"):
        HyCoLLM(temperature=-0.5)
    with pytest.raises(ValidationError, match="compressor"):
        HyCoLLM(compressor="first-sentence")
    with pytest.raises(ValidationError, match="runtime"):
        HyCoLLM(runtime=object())
    with pytest.raises(ValueError, match="non-empty query"):
        DocumentBinding(" ", ())


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mode", ["none", "rag", "dyprag", "combine"])
def test_complete_answers_like_the_core_runtime(strong: HyCoLLM, strong_runtime: Any, mode: str) -> None:
    from hyco_rag.generation import GenerationConfig

    nodes = [NodeWithScore(node=TextNode(text=EIFFEL, metadata={"title": "Eiffel"}), score=0.9), TESLA]
    response = strong.complete(QUESTION, documents=nodes, mode=mode)
    core = strong_runtime.answer(QUESTION, [EIFFEL, TESLA], mode=mode, config=GenerationConfig(max_new_tokens=MAX_TOKENS))
    assert response.text == core.text
    stats = response.additional_kwargs
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (core.prompt_tokens, core.completion_tokens)
    assert (stats["context_tokens"], stats["passage_tokens"]) == (core.context_tokens, core.passage_tokens)
    assert stats["passages_injected"] == core.passages_injected == (2 if mode in ("dyprag", "combine") else 0)
    assert stats["mode"] == mode
    assert response.raw["usage"]["total_tokens"] == core.prompt_tokens + core.completion_tokens


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
    formatted = llm._served_runtime()[0].generator.prompt("Say hello.", [])
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


def test_stop_sequences_cut_the_answer_the_same_way_streamed_or_not(runtime: Any) -> None:
    unstopped = HyCoLLM(runtime=runtime, max_new_tokens=10).complete(QUESTION, documents=[EIFFEL], mode="rag").text
    words = unstopped.split()
    assert len(words) >= 3, words
    stop = next(" " + w for w in words[len(words) // 2 :] + words[1:] if " " + w in unstopped)  # a generated word
    llm = HyCoLLM(runtime=runtime, max_new_tokens=10, stop=[stop, "\n"])
    whole = llm.complete(QUESTION, documents=[EIFFEL], mode="rag").text
    assert whole == unstopped[: unstopped.index(stop)].rstrip() and whole
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


def test_token_counting_handler_sees_the_usage(runtime: Any) -> None:
    counter = TokenCountingHandler()
    llm = HyCoLLM(runtime=runtime, max_new_tokens=MAX_TOKENS, callback_manager=CallbackManager([counter]))
    response = llm.complete(QUESTION, documents=[EIFFEL], mode="rag")
    assert counter.prompt_llm_token_count == response.additional_kwargs["prompt_tokens"]
    assert counter.completion_llm_token_count == response.additional_kwargs["completion_tokens"]


# --------------------------------------------------------------------------- isolation


def test_passages_act_on_their_own_generation_only(strong: HyCoLLM, strong_runtime: Any) -> None:
    from hyco_rag.dyprag.injection import deltas_active

    before = weights_digest(strong_runtime.model)
    closed = strong.complete(QUESTION, documents=[EIFFEL], mode="none").text
    eiffel = strong.complete(QUESTION, documents=[EIFFEL], mode="dyprag").text
    banana = strong.complete(QUESTION, documents=[BANANA], mode="dyprag").text
    assert len({closed, eiffel, banana}) == 3
    assert strong.complete(QUESTION, documents=[EIFFEL], mode="none").text == closed
    assert not deltas_active(strong_runtime.model)
    assert weights_digest(strong_runtime.model) == before


async def test_concurrent_async_requests_equal_the_sequential_run(strong: HyCoLLM) -> None:
    requests = [([EIFFEL], "dyprag"), ([BANANA], "dyprag"), ([TESLA, EIFFEL], "combine")]
    sequential = [strong.complete(QUESTION, documents=d, mode=m).text for d, m in requests]
    assert len(set(sequential)) == len(sequential)

    async def streamed(documents: list[str], mode: str) -> str:
        return [r async for r in await strong.astream_complete(QUESTION, documents=documents, mode=mode)][-1].text

    completed = asyncio.gather(*(strong.acomplete(QUESTION, documents=d, mode=m) for d, m in requests))
    streams = asyncio.gather(*(streamed(d, m) for d, m in requests))
    results, texts = await asyncio.gather(completed, streams)
    assert [r.text for r in results] == sequential
    assert texts == sequential


def test_a_binding_serves_only_prompts_of_its_query(strong: HyCoLLM) -> None:
    closed = strong.complete(QUESTION, documents=[], mode="none").text
    injected = strong.complete(QUESTION, documents=[EIFFEL], mode="dyprag").text
    other = "Where do bananas grow?"
    plain_other = strong.complete(other).text

    def run() -> tuple[str, str, str]:
        bind_documents(QUESTION, [EIFFEL], mode="dyprag")
        assert current_binding() is not None and current_binding().documents == (EIFFEL,)
        templated = f"Context information is below.\n---\n\n---\nQuery: {QUESTION}\nAnswer: "
        return strong.complete(templated).text, strong.complete(other).text, strong.complete(QUESTION, documents=[], mode="none").text

    bound, unrelated, explicit = contextvars.copy_context().run(run)
    assert bound == injected  # the synthesizer-style prompt of the query got its passages, core prompt
    assert unrelated == plain_other  # another query's prompt did not
    assert explicit == closed  # explicit documents= win over the binding
    assert current_binding() is None  # the binding stayed in the context that made it


def test_bindings_do_not_cross_threads(strong: HyCoLLM) -> None:
    seen: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def worker(name: str, documents: list[str]) -> None:
        bind_documents(QUESTION, documents, mode="dyprag")
        barrier.wait()  # both bound before either generates
        seen[name] = strong.complete(f"Query: {QUESTION}").text

    threads = [threading.Thread(target=worker, args=("eiffel", [EIFFEL])), threading.Thread(target=worker, args=("banana", [BANANA]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen["eiffel"] == strong.complete(QUESTION, documents=[EIFFEL], mode="dyprag").text
    assert seen["banana"] == strong.complete(QUESTION, documents=[BANANA], mode="dyprag").text
    assert seen["eiffel"] != seen["banana"]


class FirstSentence:
    """A core-protocol compressor (``.compress(query, documents).texts``): keeps sentence one."""

    class Result:
        def __init__(self, texts: list[str]) -> None:
            self.texts = texts

    def compress(self, query: str, documents: list[str]) -> FirstSentence.Result:
        return self.Result([d.split(". ")[0] + "." for d in documents])


def test_combine_mode_puts_the_compressed_passages_in_the_prompt(runtime: Any) -> None:
    llm = HyCoLLM(runtime=runtime, max_new_tokens=MAX_TOKENS, compressor=FirstSentence())
    stats = llm.complete(QUESTION, documents=[EIFFEL, TESLA], mode="combine").additional_kwargs
    assert 0 < stats["context_tokens"] < stats["passage_tokens"]
    assert stats["passages_injected"] == 2 and "compress" in stats["timings"]
    prompt = llm._prepare([{"role": "user", "content": QUESTION}], None, [EIFFEL], "combine", None).prompt
    assert "wrought-iron" in prompt and "1887 to 1889" not in prompt


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_named(llm: HyCoLLM, runtime: Any) -> None:
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
    image = ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="what is this?"), ImageBlock(url="https://example.com/a.png")])
    with pytest.raises(ValueError, match="text only"):
        llm.chat([image])
    with pytest.raises(ValueError, match="cannot render a tool message"):
        llm.chat([ChatMessage(role=MessageRole.TOOL, content="42")])
    with pytest.raises(ValueError, match="last message must be the user message"):
        llm.chat([ChatMessage(role=MessageRole.USER, content="hi"), ChatMessage(role=MessageRole.ASSISTANT, content="yo")], documents=[EIFFEL])
    too_long = " ".join(["word"] * (runtime.window + 10))
    with pytest.raises(ValueError, match="exceeds the model's window"):
        llm.complete(QUESTION, documents=[too_long], mode="rag")


def test_delta_modes_without_a_translator_say_what_is_missing(runtime: Any) -> None:
    from hyco_rag.dyprag.runtime import ParametricRAG

    bare = HyCoLLM(runtime=ParametricRAG(runtime.generator, None), max_new_tokens=4)
    assert bare.complete(QUESTION, documents=[EIFFEL], mode="rag").text
    with pytest.raises(ValueError, match="translator"):
        bare.complete(QUESTION, documents=[EIFFEL], mode="dyprag")
    default = HyCoLLM(max_new_tokens=4)  # by name: the cached default runtime
    if serving.served_runtime(None, None, None).runtime.translator is None:
        with pytest.raises(ValueError, match="no parameter translator is shipped"):
            default.complete(QUESTION, documents=[EIFFEL], mode="dyprag")
    else:
        assert default.complete(QUESTION, documents=[EIFFEL], mode="dyprag").additional_kwargs["passages_injected"] == 1
