"""Property-based tests (hypothesis) of the compressor's invariants, bounded for CI.

A 4-layer, 32-wide random encoder (``tiny_compressor``) runs the real code path in
milliseconds; the invariants are in :mod:`hyco_rag.compression.invariants` (the same checks
``benchmarks/fuzz_compressor.py`` runs on >= 10,000 cases, with a share on the shipped weights).
"""

from __future__ import annotations

from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is a dev dependency (pip install -e .[dev])")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hyco_rag.compression.budget import BudgetError  # noqa: E402
from hyco_rag.compression.invariants import check_result, hypothesis_strategies  # noqa: E402

STRATEGIES = hypothesis_strategies()
CI = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _counter(tokenizer: Any):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def _compress(compressor: Any, query: str, documents: list[str], options: dict[str, Any], **extra: Any):
    """The result, or None when the call was rightly refused (a floor the budget cannot hold)."""
    try:
        return compressor.compress(query, documents, **options, **extra)
    except BudgetError:
        return None
    except ValueError as error:
        assert "min_tokens_per_passage" in str(error), error  # the only refusal valid inputs may get
        return None


@CI
@given(query=STRATEGIES["query"], documents=STRATEGIES["documents"], options=STRATEGIES["options"])
def test_invariants_in_the_encoder_tokenizer(tiny_compressor, query, documents, options):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # threshold warnings are asserted elsewhere
        result = _compress(tiny_compressor, query, documents, options)
    if result is not None:
        assert check_result(documents, options, result, _counter(tiny_compressor.tokenizer),
                            default_rate=tiny_compressor.config.default_rate) == []


@CI
@given(query=STRATEGIES["query"], documents=STRATEGIES["documents"], options=STRATEGIES["options"])
def test_invariants_in_the_reader_tokenizer(tiny_compressor, reader_tokenizer, query, documents, options):
    """The budget is honoured in another (BPE) tokenizer, where merges differ across gaps."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = _compress(tiny_compressor, query, documents, options, target_tokenizer=reader_tokenizer)
    if result is not None:
        assert check_result(documents, options, result, _counter(reader_tokenizer),
                            default_rate=tiny_compressor.config.default_rate) == []


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(documents=st.lists(st.sampled_from(["Tesla was born in 1856 in Smiljan.", "Paris is in France. " * 3,
                                           '{"a": 1}', "", "東京は日本の首都です。"]), min_size=1, max_size=5),
       rate=st.floats(0.05, 1.0), reorder=st.booleans())
def test_langchain_and_llama_index_keep_ids_metadata_and_order(tiny_compressor, documents, rate, reorder):
    pytest.importorskip("langchain_hyco", reason="langchain-hyco is not installed")
    pytest.importorskip("llama_index.postprocessor.hyco", reason="llama-index-postprocessor-hyco is not installed")
    from langchain_core.documents import Document

    from langchain_hyco import HyCoCompressor
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.hyco import HyCoNodePostprocessor

    query = "Where was Tesla born?"
    docs = [Document(page_content=t, id=f"d{i}", metadata={"i": i, "nested": {"k": [i]}}) for i, t in enumerate(documents)]
    lc = HyCoCompressor(compressor=tiny_compressor, rate=rate, drop_empty=False, reorder=reorder)
    out = lc.compress_documents(docs, query)
    assert sorted(d.id for d in out) == [d.id for d in docs]
    if not reorder:
        assert [d.id for d in out] == [d.id for d in docs]
    for doc in out:
        original = docs[int(doc.id[1:])]
        assert {k: v for k, v in doc.metadata.items() if k != "hyco"} == original.metadata
        assert doc.metadata is not original.metadata
    assert all(d.metadata == {"i": i, "nested": {"k": [i]}} for i, d in enumerate(docs))  # inputs untouched

    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}", metadata={"i": i}), score=1.0 - i / 10)
             for i, t in enumerate(documents)]
    li = HyCoNodePostprocessor(compressor=tiny_compressor, rate=rate, drop_empty=False, reorder=reorder)
    processed = li.postprocess_nodes(nodes, query_str=query)
    assert sorted(n.node.id_ for n in processed) == [n.node.id_ for n in nodes]
    if not reorder:
        assert [(n.node.id_, n.score) for n in processed] == [(n.node.id_, n.score) for n in nodes]
    for node in processed:
        assert node.node.metadata["i"] == int(node.node.id_[1:])
