"""`langchain_hyco.ChatHyCo` as a thin client of the serving engine: documents per call, the eight
modes, isolation, batching, async, streaming, stop sequences, cancellation.

Everything runs the real served model (embedded SmolLM2-135M-Instruct, CPU) through real
LangChain objects, on one engine for the whole process (:func:`hyco_rag.dyprag.testing.served_engine`:
the registry's engine of SmolLM2 with a "strong" random translator whose deltas visibly change
the answer, passage by passage, so that isolation checks can actually fail, and that never
depends on the shipped translator; with a random hybrid adapter for the ``hybrid`` modes).  Mechanics that need no real model (an engine without a
translator) use a tiny random Llama.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from pydantic import ValidationError

from hyco_rag.dyprag import testing
from hyco_rag.dyprag.testing import BANANA, EIFFEL, QUESTION, SOFT_TOKENS, TESLA, strong_translator_dir, weights_digest
from hyco_rag.engine import MODE_NAMES, Engine, SamplingParams
from langchain_hyco import ChatHyCo, HyCoCompressor

MAX_TOKENS = 5
DEFAULT_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"

_one_thread, engine = testing.engine_fixtures()


def make_chat(engine: Engine, **kwargs: Any) -> ChatHyCo:
    return ChatHyCo(engine=engine, max_tokens=kwargs.pop("max_tokens", MAX_TOKENS), **kwargs)


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


class FirstSentence:
    """A core-protocol compressor (``.compress(query, documents, **budget).texts``): keeps sentence one."""

    class Result:
        def __init__(self, texts: list[str]) -> None:
            self.texts = texts

    def __init__(self) -> None:
        self.budgets: list[dict[str, Any]] = []

    def compress(self, query: str, documents: list[str], **budget: Any) -> FirstSentence.Result:
        self.budgets.append(budget)
        return self.Result([d.split(". ")[0] + "." for d in documents])


class FirstSentenceNoBudget:
    """A core-protocol compressor that takes no budget keywords at all."""

    def compress(self, query: str, documents: list[str]) -> FirstSentence.Result:
        return FirstSentence.Result([d.split(". ")[0] + "." for d in documents])


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


# --------------------------------------------------------------------------- construction


def test_construction_is_lazy_and_validated() -> None:
    chat = ChatHyCo(model="/nonexistent/model-folder", mode="rag")  # nothing is loaded here
    from hyco_rag.models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="nonexistent"):
        chat.invoke("hi")
    with pytest.raises(
        ValidationError, match="mode must be one of none, rag, hyco, dyprag, combine, combine-hyco, hybrid, combine-hybrid"
    ):
        ChatHyCo(mode="bogus")
    with pytest.raises(ValidationError, match="mode must be one of"):
        ChatHyCo(mode="combine_hyco")  # one spelling everywhere
    assert [ChatHyCo(mode=m).mode for m in MODE_NAMES] == list(MODE_NAMES)
    with pytest.raises(ValidationError, match="max_tokens"):
        ChatHyCo(max_tokens=0)
    with pytest.raises(ValidationError, match="temperature"):
        ChatHyCo(temperature=-1.0)
    with pytest.raises(ValidationError, match="compressor"):
        ChatHyCo(compressor=object())
    with pytest.raises(ValidationError, match="engine must be a hyco_rag.engine.Engine"):
        ChatHyCo(engine=object())


def test_ls_params_report_the_served_model_and_the_override() -> None:
    chat = ChatHyCo(model="smollm2", max_tokens=12, temperature=0.5, stop=["\n"])
    params = chat._get_ls_params()
    assert params["ls_provider"] == "hyco"
    assert params["ls_model_name"] == "smollm2"
    assert params["ls_model_type"] == "chat"
    assert (params["ls_max_tokens"], params["ls_temperature"], params["ls_stop"]) == (12, 0.5, ["\n"])
    assert chat._get_ls_params(model="other")["ls_model_name"] == "other"


# --------------------------------------------------------------------------- modes and prompts


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_each_mode_answers_like_the_engine(engine: Engine, mode: str) -> None:
    """A question with documents is the engine's QA turn: same prompt, same delta, same answer."""
    compressor = FirstSentence()
    chat = ChatHyCo(engine=engine, max_tokens=MAX_TOKENS, compressor=compressor)
    message = chat.invoke(QUESTION, documents=[Document(page_content=EIFFEL), TESLA], mode=mode)
    core = engine.answer(
        QUESTION, [EIFFEL, TESLA], mode=mode, sampling=SamplingParams(max_tokens=MAX_TOKENS), compressor=compressor
    )
    assert message.content == core.text
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] == core.completion.prompt_tokens == core.request.prompt_tokens
    assert message.usage_metadata["output_tokens"] == core.completion.completion_tokens
    meta = message.response_metadata
    assert meta["mode"] == mode
    assert meta["context_tokens"] == core.request.context_tokens
    assert meta["passage_tokens"] == core.request.passage_tokens > 0
    deltas = mode in ("dyprag", "combine", "combine-hyco", "combine-hybrid")
    assert meta["passages_injected"] == core.request.passages_injected == (2 if deltas else 0)
    assert meta["delta_rank"] == core.request.delta_rank and (meta["delta_rank"] > 0) == deltas
    soft = mode in ("hybrid", "combine-hybrid")
    assert meta["soft_tokens"] == core.request.soft_tokens == (SOFT_TOKENS if soft else 0)
    assert (meta["context_tokens"] > 0) == (mode not in ("none", "dyprag"))
    compressed = mode in ("hyco", "combine-hyco", "hybrid", "combine-hybrid")
    assert (0 < meta["context_tokens"] < meta["passage_tokens"]) == compressed
    assert ("compress" in meta["timings"]) == compressed
    assert meta["model_name"] == DEFAULT_NAME and meta["finish_reason"] in ("stop", "length")
    assert meta["prompt_tokens"] == message.usage_metadata["input_tokens"]


def test_without_documents_it_is_a_plain_chat_model(engine: Engine) -> None:
    chat = make_chat(engine, mode="dyprag")
    message = chat.invoke([SystemMessage("You are terse."), HumanMessage("Say hello.")])
    assert message.content
    assert message.response_metadata["documents"] == 0
    assert message.response_metadata["passages_injected"] == 0
    request = chat._prepare([SystemMessage("You are terse."), HumanMessage("Say hello.")], {})
    assert "You are terse." in request.prompt and "Say hello." in request.prompt
    assert "Answer the question" not in request.prompt  # no QA wording without documents
    assert request.delta is None


def test_history_and_system_message_stay_in_front_of_the_question(engine: Engine) -> None:
    chat = make_chat(engine, mode="rag")
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
    assert single == engine.ask(QUESTION, [EIFFEL], mode="rag").prompt


# --------------------------------------------------------------------------- ways to pass documents


def test_every_way_of_passing_documents_gives_the_same_answer(engine: Engine) -> None:
    chat = make_chat(engine, mode="combine")
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


def test_lcel_chain_over_a_real_retriever(engine: Engine, vector_store: Any) -> None:
    retriever = vector_store.as_retriever(search_kwargs={"k": 2})
    chat = make_chat(engine, mode="dyprag")
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
    rag_chunks = list(make_chat(engine, mode="rag").with_documents(retriever).stream(question))
    assert len([c for c in rag_chunks if c.content]) > 2  # token by token through the chain, not one blob


# --------------------------------------------------------------------------- isolation


def test_deltas_change_the_answer_and_never_outlive_their_call(engine: Engine) -> None:
    from hyco_rag.dyprag.injection import deltas_active

    chat = ChatHyCo(engine=engine, max_tokens=MAX_TOKENS)
    before = weights_digest(engine.model)
    closed = chat.invoke(QUESTION, documents=[EIFFEL], mode="none").content
    with_eiffel = chat.invoke(QUESTION, documents=[EIFFEL], mode="dyprag").content
    with_banana = chat.invoke(QUESTION, documents=[BANANA], mode="dyprag").content
    assert len({closed, with_eiffel, with_banana}) == 3  # the deltas really act, per passage
    assert chat.invoke(QUESTION, documents=[EIFFEL], mode="none").content == closed  # nothing leaked
    assert not deltas_active(engine.model)
    assert weights_digest(engine.model) == before


def test_an_error_mid_stream_leaves_no_delta_behind(engine: Engine) -> None:
    chat = ChatHyCo(engine=engine, max_tokens=MAX_TOKENS)
    closed = chat.invoke(QUESTION, documents=[EIFFEL], mode="none").content
    stream = chat.stream(QUESTION, documents=[EIFFEL], mode="dyprag")
    next(stream)
    with pytest.raises(RuntimeError, match="consumer gave up"):
        stream.throw(RuntimeError("consumer gave up"))
    assert wait_until(lambda: engine_is_idle(engine))
    assert chat.invoke(QUESTION, documents=[EIFFEL], mode="none").content == closed


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
    chat = ChatHyCo(engine=engine, max_tokens=12)
    requests = [([EIFFEL], "dyprag"), ([BANANA], "dyprag"), ([TESLA, EIFFEL], "combine")]
    sequential = [chat.invoke(QUESTION, documents=d, mode=m).content for d, m in requests]
    assert len(set(sequential)) == len(sequential)

    async def streamed(documents: list[str], mode: str) -> str:
        return "".join([str(c.content) async for c in chat.astream(QUESTION, documents=documents, mode=mode)])

    recorder = _BatchSizes()
    engine.add_listener(recorder)
    try:
        results = await asyncio.gather(*(chat.ainvoke(QUESTION, documents=d, mode=m) for d, m in requests))
        stream_texts = await asyncio.gather(*(streamed(d, m) for d, m in requests))
    finally:
        engine.listeners.remove(recorder)
    assert [r.content for r in results] == sequential
    assert stream_texts == sequential
    assert max(recorder.sizes) > 1, recorder.sizes  # the three calls shared decode steps
    assert engine.stats.max_batch > 1
    batched = await chat.abatch([QUESTION] * 2, config={"max_concurrency": 2}, documents=[EIFFEL], mode="dyprag")
    assert [b.content for b in batched] == [sequential[0]] * 2


async def test_async_calls_do_not_block_the_event_loop(engine: Engine) -> None:
    chat = make_chat(engine, mode="dyprag", max_tokens=6)
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


# --------------------------------------------------------------------------- cancellation


def test_closing_a_sync_stream_early_frees_the_engine_slot(engine: Engine) -> None:
    chat = make_chat(engine, mode="dyprag", max_tokens=200)
    finished_before = engine.stats.requests.get("ok", 0)
    stream = chat.stream("Write a long story about the tower.", documents=[EIFFEL])
    first = next(stream)
    assert isinstance(first, AIMessageChunk)
    stream.close()
    assert wait_until(lambda: engine_is_idle(engine), timeout=5.0), (engine.running, engine.queue_depth)
    assert engine.stats.requests.get("ok", 0) == finished_before  # it was dropped, not run to the end
    assert make_chat(engine, mode="none").invoke(QUESTION, documents=[EIFFEL]).content  # the engine still serves


async def test_cancelled_async_calls_free_the_engine_slot(engine: Engine) -> None:
    chat = make_chat(engine, mode="dyprag", max_tokens=200)
    cancelled_before = engine.stats.requests.get("cancelled", 0)

    task = asyncio.create_task(chat.ainvoke("Write a long story about the tower.", documents=[EIFFEL]))
    assert await asyncio.to_thread(wait_until, lambda: engine.running == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(wait_until, lambda: engine_is_idle(engine), 5.0)

    stream = chat.astream("Write a long story about the tower.", documents=[BANANA])
    await stream.__anext__()
    await stream.aclose()
    assert await asyncio.to_thread(wait_until, lambda: engine_is_idle(engine), 5.0)
    assert engine.stats.requests.get("cancelled", 0) >= cancelled_before + 2


# --------------------------------------------------------------------------- streaming and stops


@pytest.mark.parametrize(("mode", "stop"), [("rag", False), ("dyprag", False), ("rag", True), ("combine", False)])
def test_stream_equals_invoke_and_reports_usage_once(engine: Engine, mode: str, stop: bool) -> None:
    chat = make_chat(engine, mode=mode, max_tokens=8)
    stops = None
    if stop:
        unstopped = chat.invoke(QUESTION, documents=[EIFFEL]).content
        assert isinstance(unstopped, str)
        words = unstopped.split()
        assert len(words) >= 3, words
        # a word the model really generates, after a space, past the first word
        stops = [next(" " + w for w in words[len(words) // 2 :] + words[1:] if " " + w in unstopped)]
    invoked = chat.invoke(QUESTION, documents=[EIFFEL], stop=stops)
    chunks = list(chat.stream(QUESTION, documents=[EIFFEL], stop=stops))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(str(c.content) for c in chunks) == invoked.content
    if stops:
        assert invoked.content and invoked.content == unstopped[: unstopped.index(stops[0])].rstrip()
        assert invoked.response_metadata["finish_reason"] == "stop"
        # the engine stopped generating at the stop sequence, not at max_tokens
        assert invoked.usage_metadata["output_tokens"] < chat.invoke(QUESTION, documents=[EIFFEL]).usage_metadata["output_tokens"]
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
    assert full.response_metadata["model_name"] == DEFAULT_NAME
    assert full.response_metadata["mode"] == mode


def test_streaming_flag_feeds_callbacks_token_by_token(engine: Engine) -> None:
    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    handler = Tokens()
    chat = make_chat(engine, mode="rag", streaming=True)
    message = chat.invoke(QUESTION, documents=[EIFFEL], config={"callbacks": [handler]})
    assert len(handler.tokens) > 1
    assert "".join(handler.tokens) == message.content
    assert message.usage_metadata["input_tokens"] > 0


# --------------------------------------------------------------------------- compressor


@pytest.mark.parametrize("mode", ["hyco", "combine-hyco"])
def test_compressing_modes_use_the_given_core_compressor(engine: Engine, mode: str) -> None:
    compressor = FirstSentence()
    chat = make_chat(engine, mode=mode, compressor=compressor)
    meta = chat.invoke(QUESTION, documents=[EIFFEL, TESLA]).response_metadata
    assert 0 < meta["context_tokens"] < meta["passage_tokens"]
    assert meta["passages_injected"] == (2 if mode == "combine-hyco" else 0)  # deltas from the full passages
    assert "compress" in meta["timings"]
    assert compressor.budgets and "rate" in compressor.budgets[-1]  # the engine's default budget reached it
    prompt = chat._prepare([HumanMessage(QUESTION)], {"documents": [EIFFEL]}).prompt
    assert "1887 to 1889" not in prompt and "wrought-iron" in prompt
    # a compressor that takes no budget keywords works too
    no_budget = make_chat(engine, mode=mode, compressor=FirstSentenceNoBudget())
    assert no_budget.invoke(QUESTION, documents=[EIFFEL, TESLA]).response_metadata["context_tokens"] == meta["context_tokens"]
    # rag and combine place the passages uncompressed, whatever the compressor
    for plain in ("rag", "combine"):
        plain_meta = chat.invoke(QUESTION, documents=[EIFFEL, TESLA], mode=plain).response_metadata
        assert plain_meta["context_tokens"] == meta["passage_tokens"] and "compress" not in plain_meta["timings"]


def test_a_langchain_document_compressor_serves_combine_hyco(engine: Engine, hyco_core: Any) -> None:
    chat = make_chat(engine, mode="combine-hyco", compressor=HyCoCompressor(compressor=hyco_core, rate=0.3))
    meta = chat.invoke(QUESTION, documents=[EIFFEL, TESLA]).response_metadata
    assert 0 < meta["context_tokens"] < meta["passage_tokens"]
    assert meta["passages_injected"] == 2 and "compress" in meta["timings"]


@pytest.mark.parametrize("mode", ["hybrid", "combine-hybrid"])
def test_hybrid_answers_carry_the_adapters_soft_tokens(engine: Engine, mode: str) -> None:
    compressor = FirstSentence()
    chat = make_chat(engine, mode=mode, compressor=compressor)
    message = chat.invoke(QUESTION, documents=[EIFFEL, TESLA])
    meta = message.response_metadata
    assert meta["mode"] == mode and meta["soft_tokens"] == SOFT_TOKENS
    # One budget: the soft tokens count in it, the compressor gets the rest.
    budget = round(engine.config.compression_rate * meta["passage_tokens"])
    assert compressor.budgets[-1] == {"target_tokens": budget - SOFT_TOKENS}
    hyco = chat.invoke(QUESTION, documents=[EIFFEL, TESLA], mode="hyco").response_metadata
    assert meta["context_tokens"] == hyco["context_tokens"] + SOFT_TOKENS < meta["passage_tokens"]  # same kept text
    assert "soft" in meta["timings"] and "compress" in meta["timings"]
    assert meta["passages_injected"] == (2 if mode == "combine-hybrid" else 0)
    assert (meta["delta_rank"] > 0) == (mode == "combine-hybrid")
    request = chat._prepare([HumanMessage(QUESTION)], {"documents": [EIFFEL, TESLA]})
    assert request.soft_embeds is not None
    assert tuple(request.soft_embeds.shape) == (SOFT_TOKENS, engine.model.config.hidden_size)
    assert "wrought-iron" in request.prompt and "1887 to 1889" not in request.prompt  # the kept text, compressed
    chunks = list(chat.stream(QUESTION, documents=[EIFFEL, TESLA]))
    assert "".join(str(c.content) for c in chunks) == message.content
    assert chunks[-1].response_metadata["soft_tokens"] == SOFT_TOKENS


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_named(engine: Engine) -> None:
    chat = make_chat(engine, mode="rag")
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
    with pytest.raises(ValueError, match="max_tokens must be an integer"):
        chat.invoke(QUESTION, max_tokens=0)
    too_long = " ".join(["word"] * (engine.window + 10))
    with pytest.raises(ValueError, match="more than this engine accepts"):
        chat.invoke(QUESTION, documents=[too_long])
    assert engine_is_idle(engine)  # nothing was submitted


def test_modes_without_their_parts_say_what_is_missing(tiny_parts: tuple[Any, Any]) -> None:
    bare = Engine(*tiny_parts, None)
    try:
        chat = ChatHyCo(engine=bare, max_tokens=4)
        answer = chat.invoke(QUESTION, documents=[EIFFEL], mode="rag")  # rag needs no translator
        assert answer.usage_metadata["output_tokens"] >= 1
        with pytest.raises(ValueError, match="translator"):
            chat.invoke(QUESTION, documents=[EIFFEL], mode="dyprag")
        with pytest.raises(ValueError, match="'hybrid' and 'combine-hybrid' need a hybrid adapter"):
            chat.invoke(QUESTION, documents=[EIFFEL], mode="hybrid")  # none given, none shipped for this model
        with pytest.raises(ValueError, match="cannot switch to model"):
            chat.invoke(QUESTION, model="smollm2")
        assert wait_until(lambda: bare.running == 0)
    finally:
        bare.close()


def test_engines_by_name_are_resolved_once_and_shared(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ChatHyCo(model=...)` serves the registry's engine: aliases share it, and later calls
    neither resolve (hash) the model again nor load anything."""
    import hyco_rag.models
    from hyco_rag.engine.registry import engine_count

    by_name = ChatHyCo(model="smollm2", translator=strong_translator_dir(), mode="dyprag", max_tokens=4)
    answer = by_name.invoke(QUESTION, documents=[EIFFEL])
    assert by_name._engine_for(None) is engine  # an alias of the default model: the same engine
    assert answer.content == make_chat(engine, mode="dyprag", max_tokens=4).invoke(QUESTION, documents=[EIFFEL]).content
    assert answer.response_metadata["model_name"] == "smollm2"
    assert answer.response_metadata["passages_injected"] == 1
    count = engine_count()

    def no_resolution(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("the model was resolved again")

    monkeypatch.setattr(hyco_rag.models, "resolve_causal_lm", no_resolution)
    assert by_name.invoke(QUESTION, documents=[EIFFEL]).content == answer.content
    assert ChatHyCo(model="smollm2", translator=strong_translator_dir(), max_tokens=4).invoke("hi").content
    assert engine_count() == count
