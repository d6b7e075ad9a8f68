"""`llama_index.retrievers.hyco.HyCoRetriever` over a real `VectorStoreIndex`, with the real model."""

from __future__ import annotations

from typing import Any

import pytest

from hyco_rag.compression.testing import record_acompress, sync_path_forbidden
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.postprocessor.hyco import HyCoNodePostprocessor
from llama_index.retrievers.hyco import HyCoRetriever

QUERY = "Where was Nikola Tesla born?"


def _view(nodes: list[NodeWithScore]) -> list[tuple[str, str, float | None]]:
    return [(n.node.id_, n.node.text, n.score) for n in nodes]


def test_retrieves_and_compresses(hyco_core: Any, index: Any) -> None:
    base = index.as_retriever(similarity_top_k=4)
    retriever = HyCoRetriever(base, compressor=hyco_core, rate=0.25, drop_empty=False)
    assert isinstance(retriever, BaseRetriever)
    retrieved = base.retrieve(QUERY)
    output = retriever.retrieve(QUERY)
    assert [(n.node.id_, n.score) for n in output] == [(n.node.id_, n.score) for n in retrieved]
    for out, original in zip(output, retrieved):
        assert out.node.relationships == original.node.relationships
        assert {k: v for k, v in out.node.metadata.items() if k != "hyco"} == original.node.metadata
        assert len(out.node.text) < len(original.node.text)
    assert _view(retriever.retrieve(QueryBundle(QUERY))) == _view(output)


async def test_aretrieve_is_native(monkeypatch: pytest.MonkeyPatch, hyco_core: Any, index: Any) -> None:
    assert HyCoRetriever._aretrieve is not BaseRetriever._aretrieve
    retriever = HyCoRetriever(index.as_retriever(similarity_top_k=3), compressor=hyco_core, rate=0.5)
    expected = retriever.retrieve(QUERY)

    monkeypatch.setattr(HyCoRetriever, "_retrieve", sync_path_forbidden)
    monkeypatch.setattr(HyCoNodePostprocessor, "_postprocess_nodes", sync_path_forbidden)
    awaited = record_acompress(monkeypatch, hyco_core)
    assert _view(await retriever.aretrieve(QUERY)) == _view(expected)
    assert awaited == [QUERY]


def test_shares_a_postprocessor(hyco_core: Any, index: Any) -> None:
    postprocessor = HyCoNodePostprocessor(compressor=hyco_core, target_tokens=50)
    retriever = HyCoRetriever(index.as_retriever(similarity_top_k=3), postprocessor)
    assert retriever.postprocessor is postprocessor
    output = retriever.retrieve(QUERY)
    assert sum(n.node.metadata["hyco"]["compressed_tokens"] for n in output) <= 50


def test_in_a_query_engine(hyco_core: Any, index: Any) -> None:
    retriever = HyCoRetriever(index.as_retriever(similarity_top_k=2), compressor=hyco_core, rate=0.5, drop_empty=False)
    engine = RetrieverQueryEngine.from_args(retriever)  # Settings.llm is the MockLLM (see conftest)
    response = engine.query(QUERY)
    assert len(response.source_nodes) == 2
    for node in response.source_nodes:
        assert "hyco" in node.node.metadata and node.node.text in str(response)


def test_bad_arguments(hyco_core: Any, index: Any) -> None:
    base = index.as_retriever()
    with pytest.raises(TypeError, match="BaseRetriever"):
        HyCoRetriever(lambda q: [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        HyCoRetriever(base, HyCoNodePostprocessor(compressor=hyco_core), rate=0.5)
    with pytest.raises(TypeError, match="HyCoNodePostprocessor"):
        HyCoRetriever(base, object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HyCoRetriever(base, rate=2.0)


def test_every_retrieved_node_comes_back_by_default(hyco_core: Any, index: Any) -> None:
    """similarity_top_k=4 gives 4 nodes even when the budget empties some (ids, scores kept)."""
    base = index.as_retriever(similarity_top_k=4)
    retrieved = base.retrieve(QUERY)
    output = HyCoRetriever(base, compressor=hyco_core, target_tokens=15).retrieve(QUERY)
    assert [(n.node.id_, n.score) for n in output] == [(n.node.id_, n.score) for n in retrieved]
    assert any(n.node.metadata["hyco"]["dropped"] for n in output)
    assert all(n.node.metadata["hyco"]["dropped"] == (not n.node.text.strip()) for n in output)
    dropping = HyCoRetriever(base, compressor=hyco_core, target_tokens=15, drop_empty=True).retrieve(QUERY)
    assert [n.node.id_ for n in dropping] == [n.node.id_ for n in output if n.node.text.strip()]
