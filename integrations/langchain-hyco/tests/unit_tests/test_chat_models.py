"""`langchain_hyco.ChatHyCo` behaviour: documents per call, modes, isolation, async, streaming.

Everything runs the real served model (embedded SmolLM2-135M-Instruct, CPU) through real
LangChain objects.  Two translators are used:

- the shipped translator, or while none is shipped a randomly initialised one (near-zero
  deltas that barely move the answer: enough for plumbing checks);
- a "strong" random translator whose deltas visibly change the answer, passage by passage, so
  that isolation checks (no cross-talk, no leak into later calls) can actually fail.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from pydantic import ValidationError

from hyco_rag.dyprag import testing
from hyco_rag.dyprag.serving import StopSequenceFilter, served_runtime
from hyco_rag.dyprag.testing import BANANA, EIFFEL, QUESTION, TESLA, weights_digest
from langchain_hyco import ChatHyCo

MAX_TOKENS = 5

_one_thread, runtime, strong_runtime = testing.runtime_fixtures()


def make_chat(runtime: Any, **kwargs: Any) -> ChatHyCo:
    return ChatHyCo(runtime=runtime, max_tokens=kwargs.pop("max_tokens", MAX_TOKENS), **kwargs)


# --------------------------------------------------------------------------- construction


def test_construction_is_lazy_and_validated() -> None:
    chat = ChatHyCo(model="/nonexistent/model-folder", mode="rag")  # nothing is loaded here
    from hyco_rag.models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="nonexistent"):
        chat.invoke("hi")
    with pytest.raises(ValidationError, match="mode must be one of"):
        ChatHyCo(mode="bogus")
    with pytest.raises(ValidationError, match="max_tokens"):
        ChatHyCo(max_tokens=0)
    with pytest.raises(ValidationError, match="temperature"):
        ChatHyCo(temperature=-1.0)
    with pytest.raises(ValidationError, match="compressor"):
        ChatHyCo(compressor=object())
    with pytest.raises(ValidationError, match="runtime"):
        ChatHyCo(runtime=object())


def test_ls_params_report_the_served_model_and_the_override() -> None:
    chat = ChatHyCo(model="smollm2", max_tokens=12, temperature=0.5, stop=["\n"])
    params = chat._get_ls_params()
    assert params["ls_provider"] == "hyco"
    assert params["ls_model_name"] == "smollm2"
    assert params["ls_model_type"] == "chat"
    assert (params["ls_max_tokens"], params["ls_temperature"], params["ls_stop"]) == (12, 0.5, ["\n"])
    assert chat._get_ls_params(model="other")["ls_model_name"] == "other"


# --------------------------------------------------------------------------- modes and prompts


@pytest.mark.parametrize("mode", ["none", "rag", "dyprag", "combine"])
def test_each_mode_answers_like_the_core_runtime(strong_runtime: Any, mode: str) -> None:
    """A question with documents is the core's QA turn: same prompt, same delta, same answer."""
    from hyco_rag.generation import GenerationConfig

    chat = ChatHyCo(runtime=strong_runtime, max_tokens=MAX_TOKENS)
    message = chat.invoke(QUESTION, documents=[Document(page_content=EIFFEL), TESLA], mode=mode)
    core = strong_runtime.answer(QUESTION, [EIFFEL, TESLA], mode=mode, config=GenerationConfig(max_new_tokens=MAX_TOKENS))
    assert message.content == core.text
    assert message.usage_metadata["input_tokens"] == core.prompt_tokens
    assert message.usage_metadata["output_tokens"] == core.completion_tokens
    meta = message.response_metadata
    assert meta["mode"] == mode
    assert meta["context_tokens"] == core.context_tokens
    assert meta["passage_tokens"] == core.passage_tokens > 0
    assert meta["passages_injected"] == core.passages_injected == (2 if mode in ("dyprag", "combine") else 0)
    assert meta["delta_rank"] == core.delta_rank
    assert (meta["context_tokens"] > 0) == (mode in ("rag", "combine"))
    assert meta["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_without_documents_it_is_a_plain_chat_model(runtime: Any) -> None:
    chat = make_chat(runtime, mode="dyprag")
    message = chat.invoke([SystemMessage("You are terse."), HumanMessage("Say hello.")])
    assert message.content
    assert message.response_metadata["documents"] == 0
    assert message.response_metadata["passages_injected"] == 0
    request = chat._prepare([SystemMessage("You are terse."), HumanMessage("Say hello.")], {})
    assert "You are terse." in request.prompt and "Say hello." in request.prompt
    assert "Answer the question" not in request.prompt  # no QA wording without documents
    assert request.delta is None


def test_history_and_system_message_stay_in_front_of_the_question(runtime: Any) -> None:
    chat = make_chat(runtime, mode="rag")
    messages = [
        SystemMessage("Always answer in one word."),
        HumanMessage("Hi there"),
        AIMessage("Hello!"),
        HumanMessage(QUESTION),
    ]
    prompt = chat._prepare(messages, {"documents": [EIFFEL]}).prompt
    assert prompt.index("Always answer in one word.") < prompt.index("Hi there") < prompt.index("Hello!")
    assert prompt.index("Hello!") < prompt.index(EIFFEL) < prompt.rindex(QUESTION)
    assert "named SmolLM" not in prompt  # the conversation's system message replaces the template default
    single = chat._prepare([HumanMessage(QUESTION)], {"documents": [EIFFEL]}).prompt
    assert single == chat._runtime_for(None)[0].generator.prompt(QUESTION, [EIFFEL])


# --------------------------------------------------------------------------- ways to pass documents


def test_every_way_of_passing_documents_gives_the_same_answer(runtime: Any) -> None:
    chat = make_chat(runtime, mode="combine")
    docs = [Document(page_content=EIFFEL, metadata={"source": "a"}), BANANA]
    by_kwarg = chat.invoke(QUESTION, documents=docs)
    by_bind = chat.bind(documents=docs).invoke(QUESTION)
    by_message = chat.invoke([HumanMessage(QUESTION, additional_kwargs={"documents": docs})])
    by_runnable = chat.with_documents().invoke({"question": QUESTION, "documents": docs})
    texts = {m.content for m in (by_kwarg, by_bind, by_message, by_runnable)}
    assert len(texts) == 1
    for message in (by_bind, by_message, by_runnable):
        assert message.usage_metadata == by_kwarg.usage_metadata
        assert message.response_metadata["passages_injected"] == 2
    # The kwarg wins over documents attached to the message.
    override = chat.invoke([HumanMessage(QUESTION, additional_kwargs={"documents": docs})], documents=[EIFFEL])
    assert override.response_metadata["documents"] == 1


def test_lcel_chain_over_a_real_retriever(runtime: Any, vector_store: Any) -> None:
    retriever = vector_store.as_retriever(search_kwargs={"k": 2})
    chat = make_chat(runtime, mode="dyprag")
    chain = chat.with_documents(retriever)
    question = "Who was Nikola Tesla?"
    answer = chain.invoke(question)
    assert isinstance(answer, AIMessage) and answer.content
    meta = answer.response_metadata
    assert meta["documents"] == 2 and meta["passages_injected"] == 2 and meta["context_tokens"] == 0
    direct = chat.invoke(question, documents=retriever.invoke(question))
    assert direct.content == answer.content
    chunks = list(chain.stream(question))
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["input_tokens"] > 0
    assert "".join(c.content for c in chunks) == answer.content
    rag_chunks = list(make_chat(runtime, mode="rag").with_documents(retriever).stream(question))
    assert len([c for c in rag_chunks if c.content]) > 2  # token by token through the chain, not one blob


# --------------------------------------------------------------------------- isolation


def test_deltas_change_the_answer_and_never_outlive_their_call(strong_runtime: Any) -> None:
    from hyco_rag.dyprag.injection import deltas_active

    chat = ChatHyCo(runtime=strong_runtime, max_tokens=MAX_TOKENS)
    before = weights_digest(strong_runtime.model)
    closed = chat.invoke(QUESTION, documents=[EIFFEL], mode="none").content
    with_eiffel = chat.invoke(QUESTION, documents=[EIFFEL], mode="dyprag").content
    with_banana = chat.invoke(QUESTION, documents=[BANANA], mode="dyprag").content
    assert len({closed, with_eiffel, with_banana}) == 3  # the deltas really act, per passage
    assert chat.invoke(QUESTION, documents=[EIFFEL], mode="none").content == closed  # nothing leaked
    assert not deltas_active(strong_runtime.model)
    assert weights_digest(strong_runtime.model) == before


def test_an_error_mid_stream_leaves_no_delta_behind(strong_runtime: Any) -> None:
    from hyco_rag.dyprag.injection import deltas_active

    chat = ChatHyCo(runtime=strong_runtime, max_tokens=MAX_TOKENS)
    closed = chat.invoke(QUESTION, documents=[EIFFEL], mode="none").content
    stream = chat.stream(QUESTION, documents=[EIFFEL], mode="dyprag")
    next(stream)
    with pytest.raises(RuntimeError, match="consumer gave up"):
        stream.throw(RuntimeError("consumer gave up"))
    assert not deltas_active(strong_runtime.model)
    assert chat.invoke(QUESTION, documents=[EIFFEL], mode="none").content == closed


async def test_concurrent_async_requests_equal_the_sequential_run(strong_runtime: Any) -> None:
    chat = ChatHyCo(runtime=strong_runtime, max_tokens=MAX_TOKENS)
    requests = [([EIFFEL], "dyprag"), ([BANANA], "dyprag"), ([TESLA, EIFFEL], "combine")]
    sequential = [chat.invoke(QUESTION, documents=d, mode=m).content for d, m in requests]
    assert len(set(sequential)) == len(sequential)

    async def streamed(documents: list[str], mode: str) -> str:
        return "".join([c.content async for c in chat.astream(QUESTION, documents=documents, mode=mode)])

    invoked = asyncio.gather(*(chat.ainvoke(QUESTION, documents=d, mode=m) for d, m in requests))
    streams = asyncio.gather(*(streamed(d, m) for d, m in requests))
    results, stream_texts = await asyncio.gather(invoked, streams)
    assert [r.content for r in results] == sequential
    assert stream_texts == sequential
    batched = await chat.abatch([QUESTION] * 2, config={"max_concurrency": 2}, documents=[EIFFEL], mode="dyprag")
    assert [b.content for b in batched] == [sequential[0]] * 2


async def test_async_calls_do_not_block_the_event_loop(runtime: Any) -> None:
    chat = make_chat(runtime, mode="dyprag", max_tokens=6)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    await chat.ainvoke(QUESTION, documents=[EIFFEL])
    async for _ in chat.astream(QUESTION, documents=[EIFFEL]):
        pass
    elapsed = time.perf_counter() - start
    done.set()
    await task
    # A blocked loop would tick about twice in total; a free one ticks all along.
    assert ticks >= max(5, int(elapsed / 0.01 * 0.1)), (ticks, elapsed)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize(("mode", "stop"), [("rag", False), ("dyprag", False), ("rag", True), ("combine", False)])
def test_stream_equals_invoke_and_reports_usage_once(runtime: Any, mode: str, stop: bool) -> None:
    chat = make_chat(runtime, mode=mode, max_tokens=8)
    stops = None
    if stop:
        unstopped = chat.invoke(QUESTION, documents=[EIFFEL]).content
        words = unstopped.split()
        assert len(words) >= 3, words
        # a word the model really generates, after a space, past the first word
        stops = [next(" " + w for w in words[len(words) // 2 :] + words[1:] if " " + w in unstopped)]
    invoked = chat.invoke(QUESTION, documents=[EIFFEL], stop=stops)
    chunks = list(chat.stream(QUESTION, documents=[EIFFEL], stop=stops))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(c.content for c in chunks) == invoked.content
    if stops:
        assert invoked.content and invoked.content == unstopped[: unstopped.index(stops[0])].rstrip()
    with_usage = [c for c in chunks if c.usage_metadata and c.usage_metadata["input_tokens"]]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata["input_tokens"] == invoked.usage_metadata["input_tokens"]
    output_tokens = chunks[-1].usage_metadata["output_tokens"]
    assert 0 <= output_tokens <= 8 and (output_tokens > 0) == bool(invoked.content)
    assert [c for c in chunks if c.response_metadata.get("model_name")] == [chunks[-1]]
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.response_metadata["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert full.response_metadata["mode"] == mode


def test_streaming_flag_feeds_callbacks_token_by_token(runtime: Any) -> None:
    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    handler = Tokens()
    chat = make_chat(runtime, mode="rag", streaming=True)
    message = chat.invoke(QUESTION, documents=[EIFFEL], config={"callbacks": [handler]})
    assert len(handler.tokens) > 1
    assert "".join(handler.tokens) == message.content
    assert message.usage_metadata["input_tokens"] > 0


@pytest.mark.parametrize("seed", range(20))
def test_text_cleaner_cuts_the_same_whole_or_in_pieces(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["a", "b", " ", "\n", "ab", "ba", "  "]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
    stop = rng.choice([None, ["ab"], ["b a", "\n"], ["aa", "bbb"]])
    whole = StopSequenceFilter(stop).clean(text)
    cleaner = StopSequenceFilter(stop)
    cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
    streamed = "".join(cleaner.feed(p) for p in pieces) + cleaner.finish()
    assert streamed == whole
    assert whole == whole.strip()
    for s in stop or []:
        assert s not in whole


# --------------------------------------------------------------------------- compressor


class FirstSentence:
    """A core-protocol compressor (``.compress(query, documents).texts``): keeps sentence one."""

    class Result:
        def __init__(self, texts: list[str]) -> None:
            self.texts = texts

    def compress(self, query: str, documents: list[str]) -> FirstSentence.Result:
        return self.Result([d.split(". ")[0] + "." for d in documents])


def test_combine_mode_puts_the_compressed_passages_in_the_prompt(runtime: Any) -> None:
    chat = make_chat(runtime, mode="combine", compressor=FirstSentence())
    message = chat.invoke(QUESTION, documents=[EIFFEL, TESLA])
    meta = message.response_metadata
    assert 0 < meta["context_tokens"] < meta["passage_tokens"]
    assert meta["passages_injected"] == 2  # deltas from the full passages
    assert "compress" in meta["timings"]
    prompt = chat._prepare([HumanMessage(QUESTION)], {"documents": [EIFFEL]}).prompt
    assert "1887 to 1889" not in prompt and "wrought-iron" in prompt
    rag = chat.invoke(QUESTION, documents=[EIFFEL, TESLA], mode="rag")  # rag: uncompressed
    assert rag.response_metadata["context_tokens"] == meta["passage_tokens"]


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_named(runtime: Any) -> None:
    chat = make_chat(runtime, mode="rag")
    with pytest.raises(ValueError, match="not a single one"):
        chat.invoke(QUESTION, documents=EIFFEL)
    with pytest.raises(ValueError, match=r"documents\[1\] must be a Document or a string"):
        chat.invoke(QUESTION, documents=[EIFFEL, 42])
    with pytest.raises(ValueError, match="unexpected keyword arguments \\['document'\\]"):
        chat.invoke(QUESTION, document=[EIFFEL])
    with pytest.raises(ValueError, match="mode must be one of"):
        chat.invoke(QUESTION, documents=[EIFFEL], mode="parametric")
    with pytest.raises(ValueError, match="text only"):
        chat.invoke([HumanMessage(content=[{"type": "image", "url": "https://example.com/x.png"}])])
    with pytest.raises(ValueError, match="ToolMessage"):
        chat.invoke([HumanMessage("hi"), ToolMessage("42", tool_call_id="1")])
    with pytest.raises(ValueError, match="last message must be the HumanMessage"):
        chat.invoke([HumanMessage("hi"), AIMessage("hello")], documents=[EIFFEL])
    with pytest.raises(ValueError, match="'question' and 'documents'"):
        chat.with_documents().invoke({"query": QUESTION})
    too_long = " ".join(["word"] * (runtime.window + 10))
    with pytest.raises(ValueError, match="exceeds the model's window"):
        chat.invoke(QUESTION, documents=[too_long])


def test_delta_modes_without_a_translator_say_what_is_missing(runtime: Any) -> None:
    from hyco_rag.dyprag.runtime import ParametricRAG

    bare = ParametricRAG(runtime.generator, None)
    chat = ChatHyCo(runtime=bare, max_tokens=4)
    assert chat.invoke(QUESTION, documents=[EIFFEL], mode="rag").content  # rag needs no translator
    with pytest.raises(ValueError, match="translator"):
        chat.invoke(QUESTION, documents=[EIFFEL], mode="dyprag")
    with pytest.raises(ValueError, match="cannot switch to model"):
        chat.invoke(QUESTION, model="smollm2")


def test_the_default_runtime_is_loaded_lazily_and_shared(runtime: Any) -> None:
    """`ChatHyCo()` by name serves the cached runtime; delta modes need the shipped translator."""
    by_name = ChatHyCo(model="smollm2", mode="rag", max_tokens=4)
    answer = by_name.invoke(QUESTION, documents=[EIFFEL])
    assert answer.content == make_chat(runtime, mode="rag", max_tokens=4).invoke(QUESTION, documents=[EIFFEL]).content
    assert answer.response_metadata["model_name"] == "smollm2"
    served = served_runtime("smollm2", None, None)
    assert served is served_runtime(None, None, None)  # an alias shares the runtime of the default
    if served.runtime.translator is None:
        with pytest.raises(ValueError, match="no parameter translator is shipped"):
            by_name.invoke(QUESTION, documents=[EIFFEL], mode="dyprag")
    else:
        assert by_name.invoke(QUESTION, documents=[EIFFEL], mode="dyprag").response_metadata["passages_injected"] == 1
