"""`langchain_hyco.HyCoCompressor` with the real core model and real LangChain objects."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_text_splitters import CharacterTextSplitter
from pydantic import ValidationError

from hyco_rag.compression.testing import record_acompress, sync_path_forbidden
from langchain_hyco import HyCoCompressor

QUERY = "Which team won Super Bowl 50 and what was the final score?"


def _kept_in_order(original: str, compressed: str, spans: list[list[int]]) -> bool:
    """Every kept span of the original occurs in the compressed text, in order."""
    position = 0
    for start, end in spans:
        piece = original[start:end].strip()
        if not piece:
            continue
        found = compressed.find(piece, position)
        if found < 0:
            return False
        position = found + len(piece)
    return True


@pytest.fixture
def documents(vector_store: Any) -> list[Document]:
    # Real retrieved documents: ids and metadata as a vector store hands them out.
    return vector_store.similarity_search(QUERY, k=4)


def _tokens(docs: list[Document], field: str) -> int:
    return sum(doc.metadata["hyco"][field] for doc in docs)


# -- construction ---------------------------------------------------------------------------


def test_model_is_built_lazily_once_on_the_auto_device(
    monkeypatch: pytest.MonkeyPatch, hyco_core: Any, documents: list[Document]
) -> None:
    import hyco_rag.compression

    calls: list[tuple[Any, Any]] = []

    def fake_load(path: Any = None, device: Any = None, **kwargs: Any) -> Any:
        calls.append((path, device))
        return hyco_core  # the real, already-loaded model

    monkeypatch.setattr(hyco_rag.compression.HyCoCompressor, "from_pretrained", staticmethod(fake_load))
    compressor = HyCoCompressor(rate=0.5)
    assert calls == []  # constructing (validation included) loads nothing
    compressor.compress_documents(documents, QUERY)
    compressor.compress_documents(documents, QUERY)
    assert calls == [(None, None)]  # once, and the device is left to auto-detection
    assert compressor.core is hyco_core


def test_async_path_loads_lazily_too(monkeypatch: pytest.MonkeyPatch, hyco_core: Any, documents: list[Document]) -> None:
    import hyco_rag.compression

    calls: list[Any] = []
    monkeypatch.setattr(
        hyco_rag.compression.HyCoCompressor,
        "from_pretrained",
        staticmethod(lambda path=None, device=None, **kw: calls.append(device) or hyco_core),
    )
    compressor = HyCoCompressor(model_name_or_path=None, rate=0.5)

    async def many() -> list[Any]:
        return await asyncio.gather(*(compressor.acompress_documents(documents, QUERY) for _ in range(3)))

    results = asyncio.run(many())
    assert calls == [None]  # three concurrent first calls, one load
    assert all(len(result) == len(results[0]) for result in results)


def test_prebuilt_core_is_used_as_is(hyco_core: Any) -> None:
    first = HyCoCompressor(compressor=hyco_core)
    second = HyCoCompressor(compressor=hyco_core, rate=0.25)
    assert first.core is hyco_core and second.core is hyco_core
    assert "compressor" not in first.model_dump()  # never serialised


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": 0}, "greater than 0"),
        ({"rate": -0.5}, "greater than 0"),
        ({"rate": 1.5}, "less than or equal to 1"),
        ({"rate": math.nan}, "finite"),
        ({"rate": math.inf}, "finite"),
        ({"target_tokens": -3}, "greater than or equal to 1"),
        ({"target_tokens": 0}, "greater than or equal to 1"),
        ({"target_tokens": 2.5}, "integer"),
        ({"target_tokens": True}, "not a boolean"),
        ({"rate": True}, "not a boolean"),
        ({"threshold": False}, "not a boolean"),
        ({"threshold": math.nan}, "finite"),
        ({"threshold": 1.5}, "less than or equal to 1"),
        ({"min_tokens_per_passage": -1}, "greater than or equal to 0"),
        ({"rate": 0.5, "target_tokens": 10}, "at most one of"),
        ({"force_tokens": "Denver"}, "tuple"),
        ({"rat": 0.5}, "Extra inputs"),
        ({"device": "cpu", "compressor": object()}, "already built"),
        ({"metadata_key": ""}, "metadata_key"),
        ({"hops": 0}, "greater than or equal to 1"),
        ({"hops": 5}, "less than or equal to 4"),
        ({"hops": True}, "integer"),
    ],
)
def test_invalid_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises((ValidationError, ValueError, TypeError), match=message):
        HyCoCompressor(**options)


def test_compressor_must_be_a_core_compressor() -> None:
    with pytest.raises(TypeError, match="lacks compress, acompress"):
        HyCoCompressor(compressor=object())


# -- what the output keeps ------------------------------------------------------------------


def test_output_keeps_ids_order_and_copies_metadata(hyco_core: Any, documents: list[Document]) -> None:
    originals = [doc.model_copy(deep=True) for doc in documents]
    compressor = HyCoCompressor(compressor=hyco_core, rate=0.5, drop_empty=False)
    output = compressor.compress_documents(documents, QUERY)

    assert [doc.id for doc in output] == [doc.id for doc in documents]  # ids kept, input order kept
    assert documents == originals  # the inputs are untouched
    for position, (doc, original) in enumerate(zip(output, documents)):
        assert doc.metadata is not original.metadata
        assert doc.metadata["source"] is not original.metadata["source"]  # nested values copied too
        assert {k: v for k, v in doc.metadata.items() if k != "hyco"} == original.metadata
        stats = doc.metadata["hyco"]
        assert stats["index"] == position
        assert 0 <= stats["compressed_tokens"] <= stats["original_tokens"]
        assert stats["original_tokens"] > 0
        assert 0.0 <= stats["ratio"] <= 1.0
        assert math.isfinite(stats["relevance"])
        assert _kept_in_order(original.page_content, doc.page_content, stats["kept_spans"])
    output[0].metadata["source"]["id"] = "edited"
    assert documents[0].metadata["source"]["id"] != "edited"


def test_rate_shrinks_documents(hyco_core: Any, documents: list[Document]) -> None:
    strong = HyCoCompressor(compressor=hyco_core, rate=0.25, drop_empty=False).compress_documents(documents, QUERY)
    mild = HyCoCompressor(compressor=hyco_core, rate=0.75, drop_empty=False).compress_documents(documents, QUERY)
    original = _tokens(strong, "original_tokens")
    assert _tokens(strong, "compressed_tokens") < _tokens(mild, "compressed_tokens") < original
    assert sum(len(d.page_content) for d in strong) < sum(len(d.page_content) for d in documents)


def test_target_tokens_is_one_budget_across_documents(hyco_core: Any, documents: list[Document]) -> None:
    output = HyCoCompressor(compressor=hyco_core, target_tokens=60, drop_empty=False).compress_documents(documents, QUERY)
    assert len(output) == len(documents)
    assert _tokens(output, "compressed_tokens") <= 60


def test_hops_mark_each_hops_evidence_document(hyco_core: Any, documents: list[Document]) -> None:
    single = HyCoCompressor(compressor=hyco_core, rate=0.5, drop_empty=False).compress_documents(documents, QUERY)
    chained = HyCoCompressor(compressor=hyco_core, rate=0.5, drop_empty=False, hops=2).compress_documents(documents, QUERY)
    assert not any("evidence_hop" in doc.metadata["hyco"] for doc in single)
    hops = sorted(doc.metadata["hyco"]["evidence_hop"] for doc in chained if "evidence_hop" in doc.metadata["hyco"])
    assert hops == [1, 2]  # two hops, two different documents
    assert [doc.id for doc in chained] == [doc.id for doc in documents]


def test_reorder_sorts_by_relevance_only_when_asked(hyco_core: Any, documents: list[Document]) -> None:
    kept = HyCoCompressor(compressor=hyco_core, rate=0.5, drop_empty=False).compress_documents(documents, QUERY)
    ranked = HyCoCompressor(compressor=hyco_core, rate=0.5, drop_empty=False, reorder=True).compress_documents(documents, QUERY)
    assert [d.metadata["hyco"]["index"] for d in kept] == list(range(len(documents)))
    relevance = [d.metadata["hyco"]["relevance"] for d in ranked]
    assert relevance == sorted(relevance, reverse=True)
    assert sorted(d.id for d in ranked) == sorted(d.id for d in documents)
    by_id = {d.id: d for d in kept}
    for doc in ranked:  # same documents, same compression: only the order differs
        assert doc.page_content == by_id[doc.id].page_content


def test_documents_compressed_to_nothing_are_dropped_only_with_drop_empty(hyco_core: Any, documents: list[Document]) -> None:
    inputs = [*documents[:2], Document(page_content="", id="empty", metadata={"k": 1}), documents[2]]
    dropping = HyCoCompressor(compressor=hyco_core, rate=0.5).compress_documents(inputs, QUERY)
    keeping = HyCoCompressor(compressor=hyco_core, rate=0.5, drop_empty=False).compress_documents(inputs, QUERY)
    assert "empty" not in [d.id for d in dropping]
    assert [d.id for d in keeping] == [d.id for d in inputs]
    empty = keeping[2]
    assert empty.page_content == "" and empty.metadata["k"] == 1 and empty.metadata["hyco"]["compressed_tokens"] == 0


def test_existing_stats_key_is_replaced_in_the_copy_only(hyco_core: Any, documents: list[Document]) -> None:
    doc = documents[0].model_copy(update={"metadata": {**documents[0].metadata, "hyco": "old"}})
    (out,) = HyCoCompressor(compressor=hyco_core, rate=0.5, metadata_key="hyco").compress_documents([doc], QUERY)
    assert isinstance(out.metadata["hyco"], dict) and doc.metadata["hyco"] == "old"
    (custom,) = HyCoCompressor(compressor=hyco_core, rate=0.5, metadata_key="compression").compress_documents(
        [documents[0]], QUERY
    )
    assert "compression" in custom.metadata and "hyco" not in custom.metadata


def test_empty_input_returns_empty_without_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    import hyco_rag.compression

    def must_not_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded for an empty input")

    monkeypatch.setattr(hyco_rag.compression.HyCoCompressor, "from_pretrained", staticmethod(must_not_load))
    compressor = HyCoCompressor()
    assert compressor.compress_documents([], QUERY) == []
    assert asyncio.run(compressor.acompress_documents([], QUERY)) == []


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        (["plain string"], r"documents\[0\] is a str"),
        ([Document(page_content="ok"), {"page_content": "dict"}], r"documents\[1\] is a dict"),
        (Document(page_content="single"), "not a single one"),
        ("a string", "not a single one"),
    ],
)
def test_non_documents_are_rejected(hyco_core: Any, documents: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        HyCoCompressor(compressor=hyco_core).compress_documents(documents, QUERY)


def test_query_edge_cases(hyco_core: Any, documents: list[Document]) -> None:
    compressor = HyCoCompressor(compressor=hyco_core, rate=0.5, drop_empty=False)
    # an empty query is allowed (query-agnostic compression), and still keeps ids and order
    assert [d.id for d in compressor.compress_documents(documents, "")] == [d.id for d in documents]
    with pytest.raises(ValueError, match="query must be a string"):
        compressor.compress_documents(documents, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="query must be a string"):
        asyncio.run(compressor.acompress_documents(documents, 42))  # type: ignore[arg-type]


# -- async ------------------------------------------------------------------------------------


def test_acompress_documents_is_native(monkeypatch: pytest.MonkeyPatch, hyco_core: Any, documents: list[Document]) -> None:
    assert HyCoCompressor.acompress_documents is not BaseDocumentCompressor.acompress_documents
    compressor = HyCoCompressor(compressor=hyco_core, rate=0.5)
    expected = compressor.compress_documents(documents, QUERY)

    monkeypatch.setattr(HyCoCompressor, "compress_documents", sync_path_forbidden)
    awaited = record_acompress(monkeypatch, hyco_core)

    async def concurrent() -> list[Any]:
        return await asyncio.gather(*(compressor.acompress_documents(documents, QUERY) for _ in range(4)))

    results = asyncio.run(concurrent())
    assert awaited == [QUERY] * 4  # each call awaited the core's own async API
    for result in results:
        assert [(d.id, d.page_content, d.metadata) for d in result] == [(d.id, d.page_content, d.metadata) for d in expected]


# -- inside LangChain -------------------------------------------------------------------------


def test_contextual_compression_retriever(hyco_core: Any, vector_store: Any) -> None:
    base = vector_store.as_retriever(search_kwargs={"k": 4})
    retriever = ContextualCompressionRetriever(
        base_compressor=HyCoCompressor(compressor=hyco_core, rate=0.25, drop_empty=False), base_retriever=base
    )
    retrieved = base.invoke(QUERY)
    compressed = retriever.invoke(QUERY)
    assert [d.id for d in compressed] == [d.id for d in retrieved]
    assert all(d.id.startswith("demo-") for d in compressed)
    assert _tokens(compressed, "compressed_tokens") < _tokens(compressed, "original_tokens")
    acompressed = asyncio.run(retriever.ainvoke(QUERY))
    assert [(d.id, d.page_content) for d in acompressed] == [(d.id, d.page_content) for d in compressed]


def test_document_compressor_pipeline(hyco_core: Any, documents: list[Document]) -> None:
    splitter = CharacterTextSplitter(separator=". ", chunk_size=300, chunk_overlap=0, add_start_index=True)
    pipeline = DocumentCompressorPipeline(
        transformers=[splitter, HyCoCompressor(compressor=hyco_core, rate=0.5, drop_empty=False)]
    )
    chunks = splitter.split_documents(documents)
    output = pipeline.compress_documents(documents, QUERY)
    assert len(output) == len(chunks) > len(documents)
    for chunk, doc in zip(chunks, output):
        assert doc.metadata["start_index"] == chunk.metadata["start_index"]  # the splitter's metadata survives
        assert doc.metadata["title"] == chunk.metadata["title"]
        assert doc.metadata["hyco"]["original_tokens"] > 0
    aoutput = asyncio.run(pipeline.acompress_documents(documents, QUERY))
    assert [d.page_content for d in aoutput] == [d.page_content for d in output]


def test_lcel_chain(hyco_core: Any, vector_store: Any) -> None:
    compressor = HyCoCompressor(compressor=hyco_core, rate=0.5)
    retriever = vector_store.as_retriever(search_kwargs={"k": 3})

    def context(docs: list[Document]) -> str:
        return "\n\n".join(doc.page_content for doc in docs)

    chain = {"query": RunnablePassthrough(), "documents": retriever} | compressor | RunnableLambda(context)
    text = chain.invoke(QUERY)
    full = context(retriever.invoke(QUERY))
    assert 0 < len(text) < len(full)
    assert asyncio.run(chain.ainvoke(QUERY)) == text
    assert chain.batch([QUERY, "Where was Nikola Tesla born?"])[0] == text
    # strings are accepted as documents too
    docs = compressor.invoke({"query": QUERY, "documents": ["Denver beat Carolina 24-10.", "Tesla was born in Smiljan."]})
    assert all(isinstance(d, Document) and "hyco" in d.metadata for d in docs)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("just a query", "takes a mapping"),
        ({"question": QUERY, "documents": []}, "takes a mapping"),
        ({"query": QUERY, "documents": "one string"}, "must be a list"),
    ],
)
def test_runnable_input_errors(hyco_core: Any, value: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        HyCoCompressor(compressor=hyco_core).invoke(value)
