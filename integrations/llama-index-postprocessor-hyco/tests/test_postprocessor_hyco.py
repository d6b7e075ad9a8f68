"""`HyCoNodePostprocessor` with the real core model over a real `VectorStoreIndex`."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from pydantic import ValidationError

from hyco_rag.compression.testing import record_acompress, sync_path_forbidden
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import ImageNode, MetadataMode, Node, NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.hyco import HyCoNodePostprocessor

QUERY = "Which team won Super Bowl 50 and what was the final score?"


@pytest.fixture
def retrieved(index: Any) -> list[NodeWithScore]:
    return index.as_retriever(similarity_top_k=4).retrieve(QUERY)


def _tokens(nodes: list[NodeWithScore], field: str) -> int:
    return sum(n.node.metadata["hyco"][field] for n in nodes)


def test_is_a_node_postprocessor_with_native_async() -> None:
    assert issubclass(HyCoNodePostprocessor, BaseNodePostprocessor)
    assert HyCoNodePostprocessor._apostprocess_nodes is not BaseNodePostprocessor._apostprocess_nodes
    assert HyCoNodePostprocessor.class_name() == "HyCoNodePostprocessor"


def test_one_node_per_input_keeping_id_score_relationships_and_metadata(hyco_core: Any, retrieved: list[NodeWithScore]) -> None:
    originals = [n.model_copy(deep=True) for n in retrieved]
    output = HyCoNodePostprocessor(compressor=hyco_core, rate=0.5, drop_empty=False).postprocess_nodes(retrieved, query_str=QUERY)
    assert [n.node.id_ for n in output] == [n.node.id_ for n in retrieved]
    assert [n.score for n in output] == [n.score for n in retrieved]
    for out, original in zip(output, retrieved):
        assert out.node.relationships == original.node.relationships
        assert out.node.relationships is not original.node.relationships
        assert out.node.metadata is not original.node.metadata
        assert out.node.metadata["tags"] is not original.node.metadata["tags"]
        assert {k: v for k, v in out.node.metadata.items() if k != "hyco"} == original.node.metadata
        stats = out.node.metadata["hyco"]
        assert 0 <= stats["compressed_tokens"] <= stats["original_tokens"] and 0.0 <= stats["ratio"] <= 1.0
        assert math.isfinite(stats["relevance"])
        # stats stay out of what the LLM and the embedder read
        assert "hyco" in out.node.excluded_llm_metadata_keys and "hyco" in out.node.excluded_embed_metadata_keys
        assert "original_tokens" not in out.node.get_content(metadata_mode=MetadataMode.LLM)
        assert out.node.get_content() == out.node.text
    for node, original in zip(retrieved, originals):  # the inputs (and the index's nodes) are untouched
        assert node.node.text == original.node.text and node.node.metadata == original.node.metadata
    output[0].node.metadata["tags"].append("edited")
    assert "edited" not in retrieved[0].node.metadata["tags"]
    assert _tokens(output, "compressed_tokens") < _tokens(output, "original_tokens")
    assert sum(len(n.node.text) for n in output) < sum(len(n.node.text) for n in retrieved)


def test_never_joins_nodes(hyco_core: Any, retrieved: list[NodeWithScore]) -> None:
    output = HyCoNodePostprocessor(compressor=hyco_core, rate=0.75, drop_empty=False).postprocess_nodes(
        retrieved, query_str=QUERY
    )
    for out, original in zip(output, retrieved):
        for start, end in out.node.metadata["hyco"]["kept_spans"]:  # spans index this node's own text
            assert 0 <= start <= end <= len(original.node.text)
        assert len(out.node.text) <= len(original.node.text) + len(out.node.metadata["hyco"]["kept_spans"])


def test_hops_mark_each_hops_evidence_node(hyco_core: Any, retrieved: list[NodeWithScore]) -> None:
    output = HyCoNodePostprocessor(compressor=hyco_core, rate=0.5, drop_empty=False, hops=2).postprocess_nodes(
        retrieved, query_str=QUERY
    )
    assert [n.node.id_ for n in output] == [n.node.id_ for n in retrieved]
    hops = sorted(n.node.metadata["hyco"]["evidence_hop"] for n in output if "evidence_hop" in n.node.metadata["hyco"])
    assert hops == [1, 2]
    with pytest.raises(ValidationError, match="hops"):
        HyCoNodePostprocessor(compressor=hyco_core, hops=0)


def test_reorder_and_drop_empty(hyco_core: Any, retrieved: list[NodeWithScore]) -> None:
    empty = NodeWithScore(node=TextNode(text="", id_="empty-node"), score=0.01)
    nodes = [*retrieved[:2], empty, *retrieved[2:]]
    kept = HyCoNodePostprocessor(compressor=hyco_core, rate=0.5, drop_empty=False).postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.id_ for n in kept] == [n.node.id_ for n in nodes]
    assert kept[2].node.text == "" and kept[2].score == 0.01
    dropped = HyCoNodePostprocessor(compressor=hyco_core, rate=0.5).postprocess_nodes(nodes, query_str=QUERY)
    assert "empty-node" not in [n.node.id_ for n in dropped]
    ranked = HyCoNodePostprocessor(compressor=hyco_core, rate=0.5, reorder=True, drop_empty=False).postprocess_nodes(
        retrieved, query_str=QUERY
    )
    relevance = [n.node.metadata["hyco"]["relevance"] for n in ranked]
    assert relevance == sorted(relevance, reverse=True)
    assert sorted(n.node.id_ for n in ranked) == sorted(n.node.id_ for n in retrieved)
    ranked_dropping = HyCoNodePostprocessor(compressor=hyco_core, rate=0.5, reorder=True).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert "empty-node" not in [n.node.id_ for n in ranked_dropping]
    assert all(n.node.text.strip() for n in ranked_dropping)
    relevance = [n.node.metadata["hyco"]["relevance"] for n in ranked_dropping]
    assert relevance == sorted(relevance, reverse=True)


def test_nodes_without_text_pass_through(hyco_core: Any, retrieved: list[NodeWithScore]) -> None:
    image = NodeWithScore(node=ImageNode(text="", image_url="https://example.org/a.png", id_="image"), score=0.5)
    output = HyCoNodePostprocessor(compressor=hyco_core, rate=0.5, drop_empty=False).postprocess_nodes(
        [retrieved[0], image, retrieved[1]], query_str=QUERY
    )
    assert [n.node.id_ for n in output] == [retrieved[0].node.id_, "image", retrieved[1].node.id_]
    assert output[1] is image and "hyco" not in image.node.metadata
    assert [output[0].node.metadata["hyco"]["index"], output[2].node.metadata["hyco"]["index"]] == [0, 2]


def test_multimodal_node_text_resource_is_compressed(hyco_core: Any, retrieved: list[NodeWithScore]) -> None:
    text = retrieved[0].node.text
    node = Node(id_="mm", metadata={"k": "v"})
    node.set_content(text)
    node.text_resource.mimetype = "text/plain"
    (out,) = HyCoNodePostprocessor(compressor=hyco_core, rate=0.25).postprocess_nodes(
        [NodeWithScore(node=node, score=0.9)], query_str=QUERY
    )
    assert isinstance(out.node, Node) and out.node.id_ == "mm" and out.score == 0.9
    assert out.node.text_resource.mimetype == "text/plain"
    assert len(out.node.get_content()) < len(text) and node.get_content() == text
    assert out.node.metadata["k"] == "v" and "hyco" in out.node.metadata


async def test_apostprocess_is_native(monkeypatch: pytest.MonkeyPatch, hyco_core: Any, retrieved: list[NodeWithScore]) -> None:
    postprocessor = HyCoNodePostprocessor(compressor=hyco_core, rate=0.5)
    expected = postprocessor.postprocess_nodes(retrieved, query_str=QUERY)

    monkeypatch.setattr(HyCoNodePostprocessor, "_postprocess_nodes", sync_path_forbidden)
    awaited = record_acompress(monkeypatch, hyco_core)
    results = await asyncio.gather(*(postprocessor.apostprocess_nodes(retrieved, query_str=QUERY) for _ in range(3)))
    assert awaited == [QUERY] * 3
    for result in results:
        assert [(n.node.id_, n.node.text, n.score) for n in result] == [(n.node.id_, n.node.text, n.score) for n in expected]


def test_lazy_load_on_first_use(monkeypatch: pytest.MonkeyPatch, hyco_core: Any, retrieved: list[NodeWithScore]) -> None:
    import hyco_rag.compression

    calls: list[Any] = []
    monkeypatch.setattr(
        hyco_rag.compression.HyCoCompressor,
        "from_pretrained",
        staticmethod(lambda path=None, device=None, **kw: calls.append((path, device)) or hyco_core),
    )
    postprocessor = HyCoNodePostprocessor(rate=0.5)
    assert calls == []
    postprocessor.postprocess_nodes(retrieved, query_str=QUERY)
    asyncio.run(postprocessor.apostprocess_nodes(retrieved, query_str=QUERY))
    assert calls == [(None, None)]
    assert "compressor" not in postprocessor.to_dict()


def test_query_engine_with_the_postprocessor(hyco_core: Any, index: Any) -> None:
    postprocessor = HyCoNodePostprocessor(compressor=hyco_core, rate=0.25, drop_empty=False)
    engine = index.as_query_engine(similarity_top_k=3, node_postprocessors=[postprocessor])
    response = engine.query(QUERY)
    assert len(response.source_nodes) == 3
    prompt = str(response)  # the MockLLM echoes its prompt: the compressed texts are what it read
    for node in response.source_nodes:
        assert node.node.text in prompt and "hyco" in node.node.metadata
    aresponse = asyncio.run(engine.aquery(QUERY))
    assert [n.node.text for n in aresponse.source_nodes] == [n.node.text for n in response.source_nodes]


def test_errors(hyco_core: Any, retrieved: list[NodeWithScore]) -> None:
    postprocessor = HyCoNodePostprocessor(compressor=hyco_core)
    with pytest.raises(ValueError, match="query"):
        postprocessor.postprocess_nodes(retrieved)
    with pytest.raises(TypeError, match=r"nodes\[1\] is a TextNode"):
        postprocessor.postprocess_nodes([retrieved[0], retrieved[1].node], query_str=QUERY)  # type: ignore[list-item]
    # an empty query string is allowed: query-agnostic compression, one node per input still
    assert len(
        HyCoNodePostprocessor(compressor=hyco_core, drop_empty=False).postprocess_nodes(retrieved, query_bundle=QueryBundle(""))
    ) == len(retrieved)
    assert postprocessor.postprocess_nodes([], query_str=QUERY) == []
    for options in ({"rate": 0}, {"rate": math.nan}, {"target_tokens": -1}, {"threshold": -0.1}, {"rate": 0.5, "threshold": 0.5}):
        with pytest.raises(ValidationError):
            HyCoNodePostprocessor(**options)
    with pytest.raises(TypeError, match="lacks compress"):
        HyCoNodePostprocessor(compressor=object())
