"""`DyPRAGNodePostprocessor` in real LlamaIndex query engines with `HyCoLLM`.

The index is the shared real `VectorStoreIndex` (MiniLM embeddings over the demo corpus, see
conftest.py); the LLM is the real served SmolLM2-135M-Instruct, through the process's one
serving engine (:func:`hyco_rag.dyprag.testing.served_engine`).  `Settings.llm` stays the
MockLLM of conftest.py: every engine here names its HyCoLLM explicitly.  The answering engine
uses a "strong" random translator whose deltas visibly change the answer, so a lost, leaked or
crossed passage changes the output and fails a test (and the shipped translator is never needed);
a random hybrid adapter serves the ``hybrid`` modes.
"""

from __future__ import annotations

import asyncio
import contextvars
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import ValidationError

from hyco_rag.dyprag import testing
from hyco_rag.engine import MODE_NAMES, Engine
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.llms import MockLLM
from llama_index.core.schema import MetadataMode, QueryBundle
from llama_index.llms.hyco import HyCoLLM, PassagesMissingWarning, current_binding
from llama_index.llms.hyco import base as hyco_llm_base
from llama_index.postprocessor.hyco import DyPRAGNodePostprocessor

TESLA_Q = "Where was Nikola Tesla born?"
SUPER_BOWL_Q = "Which team won Super Bowl 50?"
MAX_TOKENS = 5
TOP_K = 2


_one_thread, engine_fixture = testing.engine_fixtures()


@pytest.fixture(autouse=True)
def _fresh_binding() -> Iterator[None]:
    """Sync tests share the main thread's context: start each without a binding, restore after."""
    token = hyco_llm_base._BINDING.set(None)
    yield
    hyco_llm_base._BINDING.reset(token)


@pytest.fixture
def llm(engine: Engine) -> HyCoLLM:
    return HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS, mode="dyprag")


def make_query_engine(index: VectorStoreIndex, llm: HyCoLLM, **kwargs: Any) -> Any:
    postprocessor = DyPRAGNodePostprocessor(llm, mode=kwargs.pop("mode", None), prompt=kwargs.pop("prompt", "core"))
    return index.as_query_engine(llm=llm, similarity_top_k=TOP_K, node_postprocessors=[postprocessor], **kwargs)


def passages(response: Any) -> list[str]:
    """The retrieved text of each source node (kept in metadata when the node was emptied)."""
    return [n.node.metadata["dyprag"].get("text", n.node.get_content(MetadataMode.NONE)) for n in response.source_nodes]


# --------------------------------------------------------------------------- the nodes


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_one_output_node_per_input_with_identity_and_a_metadata_copy(index: VectorStoreIndex, llm: HyCoLLM, mode: str) -> None:
    nodes = index.as_retriever(similarity_top_k=3).retrieve(TESLA_Q)
    originals = [(n.node.node_id, n.score, n.node.get_content(MetadataMode.NONE), dict(n.node.metadata)) for n in nodes]
    out = DyPRAGNodePostprocessor(llm, mode=mode).postprocess_nodes(nodes, query_bundle=QueryBundle(TESLA_Q))
    assert len(out) == len(nodes)
    emptied = mode in ("none", "dyprag")
    for before, after, (node_id, score, text, metadata) in zip(nodes, out, originals):
        assert after.node.node_id == node_id and after.score == score
        assert after.node.relationships == before.node.relationships
        assert after.node.metadata is not before.node.metadata
        assert before.node.get_content(MetadataMode.NONE) == text and before.node.metadata == metadata  # input untouched
        record = after.node.metadata["dyprag"]
        assert record["mode"] == mode
        assert record["in_deltas"] == (mode in ("dyprag", "combine", "combine-hyco", "combine-hybrid"))
        assert record["in_context"] == (not emptied)
        assert {k: v for k, v in after.node.metadata.items() if k != "dyprag"} == metadata
        assert "dyprag" not in after.node.get_content(MetadataMode.LLM)
        assert "dyprag" not in after.node.get_content(MetadataMode.EMBED)
        if emptied:
            assert after.node.get_content(MetadataMode.LLM) == ""  # nothing of the passage reaches the prompt
            assert record["text"] == text
        else:
            assert after.node.get_content(MetadataMode.NONE) == text
    binding = current_binding()
    assert binding is not None and binding.query == TESLA_Q and binding.mode == mode
    assert list(binding.documents) == [t for _, _, t, _ in originals]


def test_configuration_is_checked() -> None:
    with pytest.raises(TypeError, match="needs a HyCoLLM"):
        DyPRAGNodePostprocessor(MockLLM())
    with pytest.raises(ValueError, match="or a mode"):
        DyPRAGNodePostprocessor()
    with pytest.raises(ValidationError, match="mode must be one of"):
        DyPRAGNodePostprocessor(mode="parametric")
    with pytest.raises(ValidationError, match="prompt must be one of"):
        DyPRAGNodePostprocessor(mode="dyprag", prompt="mine")
    with pytest.raises(ValueError, match="query_bundle"):
        DyPRAGNodePostprocessor(mode="dyprag").postprocess_nodes([])


def test_hybrid_modes_refuse_the_synthesizer_prompt(index: VectorStoreIndex, engine: Engine) -> None:
    """Soft tokens go into the core QA prompt: ``prompt="synthesizer"`` (keep the synthesizer's
    prompt) cannot carry them, and says so when built, or when binding if the LLM's mode changed."""
    with pytest.raises(ValueError, match=r"mode 'hybrid' .*cannot keep the synthesizer's prompt.*use prompt='core'"):
        DyPRAGNodePostprocessor(mode="hybrid", prompt="synthesizer")
    hybrid_llm = HyCoLLM(engine=engine, mode="combine-hybrid")
    with pytest.raises(ValueError, match="mode 'combine-hybrid' .*use prompt='core'"):
        DyPRAGNodePostprocessor(hybrid_llm, prompt="synthesizer")
    assert DyPRAGNodePostprocessor(hybrid_llm, mode="combine", prompt="synthesizer").effective_mode == "combine"
    llm = HyCoLLM(engine=engine, mode="dyprag")
    postprocessor = DyPRAGNodePostprocessor(llm, prompt="synthesizer")
    llm.mode = "hybrid"  # changed after the postprocessor was built
    nodes = index.as_retriever(similarity_top_k=TOP_K).retrieve(TESLA_Q)
    with pytest.raises(ValueError, match="mode 'hybrid' .*use prompt='core'"):
        postprocessor.postprocess_nodes(nodes, query_bundle=QueryBundle(TESLA_Q))
    assert current_binding() is None  # nothing was bound


# --------------------------------------------------------------------------- query engines


@pytest.mark.parametrize("mode", ["rag", "dyprag", "combine"])
def test_query_engine_answers_with_that_querys_nodes(index: VectorStoreIndex, llm: HyCoLLM, mode: str) -> None:
    response = make_query_engine(index, llm, mode=mode).query(TESLA_Q)
    texts = passages(response)
    assert len(texts) == TOP_K
    assert str(response) == llm.complete(TESLA_Q, documents=texts, mode=mode).text


class FirstSentence:
    """A core-protocol compressor: keeps each passage's first sentence."""

    def compress(self, query: str, documents: list[str], **budget: Any) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(texts=[d.split(". ")[0] + "." for d in documents])


@pytest.mark.parametrize("mode", ["hybrid", "combine-hybrid"])
def test_a_hybrid_query_answers_with_soft_tokens_of_its_nodes(index: VectorStoreIndex, engine: Engine, mode: str) -> None:
    llm = HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS, compressor=FirstSentence())
    response = make_query_engine(index, llm, mode=mode).query(TESLA_Q)
    texts = passages(response)
    assert len(texts) == TOP_K and all(n.node.metadata["dyprag"]["in_context"] for n in response.source_nodes)
    direct = llm.complete(TESLA_Q, documents=texts, mode=mode)
    assert str(response) == direct.text
    assert direct.additional_kwargs["soft_tokens"] == testing.SOFT_TOKENS
    assert direct.additional_kwargs["passages_injected"] == (TOP_K if mode == "combine-hybrid" else 0)


def test_dyprag_answer_comes_from_the_deltas(index: VectorStoreIndex, llm: HyCoLLM) -> None:
    closed = make_query_engine(index, llm, mode="none").query(TESLA_Q)
    injected = make_query_engine(index, llm, mode="dyprag").query(TESLA_Q)
    assert all(n.node.get_content(MetadataMode.LLM) == "" for n in injected.source_nodes)
    assert str(injected) != str(closed)
    assert str(closed) == llm.complete(TESLA_Q, documents=[], mode="none").text


def test_synthesizer_prompt_style_keeps_llamaindex_templates(index: VectorStoreIndex, engine: Engine) -> None:
    counter = TokenCountingHandler()
    llm = HyCoLLM(engine=engine, max_new_tokens=MAX_TOKENS)

    def query(mode: str, prompt: str) -> Any:
        # Building an engine hands the LLM the engine's callback manager (Settings' by default).
        previous = Settings._callback_manager
        Settings.callback_manager = CallbackManager([counter])
        try:
            return make_query_engine(index, llm, mode=mode, prompt=prompt).query(TESLA_Q)
        finally:
            Settings._callback_manager = previous

    core = query("dyprag", "core")
    core_tokens = counter.llm_token_counts[-1].prompt_token_count
    kept = query("dyprag", "synthesizer")
    kept_tokens = counter.llm_token_counts[-1].prompt_token_count
    assert kept_tokens > core_tokens + 30  # LlamaIndex's QA template, with an empty context
    closed = query("none", "synthesizer")
    assert counter.llm_token_counts[-1].prompt_token_count == kept_tokens  # same prompt ...
    assert str(kept) != str(closed)  # ... and the deltas alone change the answer
    assert str(core)


def test_streaming_query_engine_streams_the_same_answer(index: VectorStoreIndex, llm: HyCoLLM) -> None:
    expected = str(make_query_engine(index, llm, mode="dyprag").query(SUPER_BOWL_Q))
    streaming = make_query_engine(index, llm, mode="dyprag", streaming=True).query(SUPER_BOWL_Q)
    assert current_binding() is None  # the query ended; its lazily generated stream keeps its passages
    pieces = list(streaming.response_gen)
    assert len(pieces) > 1
    assert "".join(pieces) == expected


async def test_async_streaming_query_engine_streams_the_same_answer(index: VectorStoreIndex, llm: HyCoLLM) -> None:
    expected = str(await make_query_engine(index, llm, mode="dyprag").aquery(SUPER_BOWL_Q))
    streaming = await make_query_engine(index, llm, mode="dyprag", streaming=True).aquery(SUPER_BOWL_Q)
    assert current_binding() is None
    pieces = [piece async for piece in streaming.async_response_gen()]
    assert len(pieces) > 1
    assert "".join(pieces) == expected


def test_a_query_binding_does_not_leak_into_unrelated_calls(index: VectorStoreIndex, llm: HyCoLLM) -> None:
    other = "Name a famous painter."
    with pytest.warns(PassagesMissingWarning):
        fresh = llm.complete(other).text
    make_query_engine(index, llm, mode="dyprag").query(TESLA_Q)
    assert current_binding() is None  # the binding ended with its query
    assert llm.complete(other).text == fresh


def test_a_later_query_on_the_same_thread_does_not_see_old_passages(index: VectorStoreIndex, llm: HyCoLLM) -> None:
    """Two sequential queries on one thread, the second without nodes (its engine has no
    postprocessor): the second must answer from its own prompt, not the first's passages.  With
    the binding left in the thread's context and matched by substring, it got them."""
    plain_engine = index.as_query_engine(llm=llm, similarity_top_k=TOP_K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PassagesMissingWarning)  # the second engine has no postprocessor: that is the point
        alone = contextvars.Context().run(lambda: str(plain_engine.query(TESLA_Q)))  # a fresh thread context
        bound = str(make_query_engine(index, llm, mode="dyprag").query(TESLA_Q))
        after = str(plain_engine.query(TESLA_Q))
    assert bound != alone  # the first query really used its passages as deltas
    assert after == alone
    assert current_binding() is None


def test_a_query_starts_without_a_binding_left_by_a_direct_call(index: VectorStoreIndex, llm: HyCoLLM) -> None:
    """Outside a query engine the postprocessor's binding stays in force in its context, but the
    next query starts without it (and restores it when it ends)."""
    nodes = index.as_retriever(similarity_top_k=TOP_K).retrieve(SUPER_BOWL_Q)
    DyPRAGNodePostprocessor(llm, mode="dyprag").postprocess_nodes(nodes, query_bundle=QueryBundle(TESLA_Q))
    left = current_binding()
    assert left is not None and left.query == TESLA_Q
    plain_engine = index.as_query_engine(llm=llm, similarity_top_k=TOP_K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PassagesMissingWarning)
        alone = contextvars.Context().run(lambda: str(plain_engine.query(TESLA_Q)))
        assert str(plain_engine.query(TESLA_Q)) == alone  # the Super Bowl passages bound above did not reach it
    assert current_binding() is left


async def test_concurrent_async_queries_do_not_cross_talk(index: VectorStoreIndex, llm: HyCoLLM) -> None:
    query_engine = make_query_engine(index, llm, mode="dyprag")
    sequential = {q: str(query_engine.query(q)) for q in (TESLA_Q, SUPER_BOWL_Q)}
    assert sequential[TESLA_Q] != sequential[SUPER_BOWL_Q]
    results = await asyncio.gather(query_engine.aquery(TESLA_Q), query_engine.aquery(SUPER_BOWL_Q), query_engine.aquery(TESLA_Q))
    assert [str(r) for r in results] == [sequential[TESLA_Q], sequential[SUPER_BOWL_Q], sequential[TESLA_Q]]


def test_concurrent_threaded_queries_do_not_cross_talk(index: VectorStoreIndex, llm: HyCoLLM) -> None:
    query_engine = make_query_engine(index, llm, mode="dyprag")
    sequential = [str(query_engine.query(q)) for q in (TESLA_Q, SUPER_BOWL_Q)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        # Threads of a pool do not share the submitting context; each query binds its own.
        threaded = list(
            pool.map(lambda q: contextvars.Context().run(lambda: str(query_engine.query(q))), [TESLA_Q, SUPER_BOWL_Q])
        )
    assert threaded == sequential


def test_works_with_settings_llm_and_a_postprocessor_without_llm(index: VectorStoreIndex, llm: HyCoLLM) -> None:
    previous = Settings._llm
    Settings.llm = llm
    try:
        response = index.as_query_engine(
            similarity_top_k=TOP_K, node_postprocessors=[DyPRAGNodePostprocessor(mode="dyprag")]
        ).query(TESLA_Q)
    finally:
        Settings._llm = previous
    assert str(response) == llm.complete(TESLA_Q, documents=passages(response), mode="dyprag").text
