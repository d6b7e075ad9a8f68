"""`langchain_hyco.HyCoRetriever`: the langchain-tests standard suite and our own behaviour tests."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda
from langchain_tests.integration_tests import RetrieversIntegrationTests

from hyco_rag.compression.testing import sync_path_forbidden
from langchain_hyco import HyCoCompressor, HyCoRetriever

QUERY = "Where was Nikola Tesla born?"


class TestHyCoRetrieverStandard(RetrieversIntegrationTests):
    """The ecosystem's own retriever checks (k in the constructor and per call, exact counts)."""

    _params: dict[str, Any] = {}

    @pytest.fixture(autouse=True)
    def _real_objects(self, hyco_core: Any, vector_store: Any) -> None:
        # Properties cannot take fixtures: hand the session's real model and store over here.
        # drop_empty=False: the suite checks that k documents come back; with the default
        # drop_empty=True a document compressed to nothing is left out (tested below).
        type(self)._params = {
            "base_retriever": vector_store.as_retriever(),
            "compressor": HyCoCompressor(compressor=hyco_core, rate=0.5, drop_empty=False),
        }

    @property
    def retriever_constructor(self) -> type[HyCoRetriever]:
        return HyCoRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def retriever_query_example(self) -> str:
        return QUERY


class FieldKRetriever(BaseRetriever):
    """A retriever that takes no call keywords and only knows its own ``k`` field."""

    documents: list[Document]
    k: int = 2

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self.documents[: self.k]


def _ids(docs: list[Document]) -> list[str | None]:
    return [doc.id for doc in docs]


def test_k_is_routed_to_a_vector_store_retriever(hyco_core: Any, vector_store: Any) -> None:
    base = vector_store.as_retriever(search_kwargs={"k": 2})
    retriever = HyCoRetriever(base_retriever=base, compressor=hyco_core, rate=0.5, drop_empty=False)
    assert _ids(retriever.invoke(QUERY)) == _ids(base.invoke(QUERY))  # base default when k is unset
    assert _ids(retriever.invoke(QUERY, k=5)) == _ids(base.invoke(QUERY, k=5))
    with_k = retriever.model_copy(update={"k": 6})
    assert _ids(with_k.invoke(QUERY)) == _ids(base.invoke(QUERY, k=6))
    assert _ids(with_k.invoke(QUERY, k=1)) == _ids(base.invoke(QUERY, k=1))  # the call wins
    assert base.search_kwargs == {"k": 2}  # the wrapped retriever is not modified


def test_k_reaches_a_retriever_through_its_field(hyco_core: Any, vector_store: Any) -> None:
    documents = vector_store.similarity_search(QUERY, k=5)
    base = FieldKRetriever(documents=documents)
    retriever = HyCoRetriever(base_retriever=base, compressor=hyco_core, rate=0.5, drop_empty=False, k=4)
    assert _ids(retriever.invoke(QUERY)) == _ids(documents[:4])
    assert _ids(retriever.invoke(QUERY, k=3)) == _ids(documents[:3])
    assert base.k == 2


def test_k_cuts_a_plain_runnable(hyco_core: Any, vector_store: Any) -> None:
    documents = vector_store.similarity_search(QUERY, k=5)
    base = RunnableLambda(lambda query: list(documents))
    retriever = HyCoRetriever(base_retriever=base, compressor=hyco_core, rate=0.5, drop_empty=False)
    assert _ids(retriever.invoke(QUERY)) == _ids(documents)
    assert _ids(retriever.invoke(QUERY, k=2)) == _ids(documents[:2])


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3"])
def test_bad_k_is_rejected(hyco_core: Any, vector_store: Any, k: Any) -> None:
    base = vector_store.as_retriever()
    with pytest.raises(ValueError, match="k must be a positive integer"):
        HyCoRetriever(base_retriever=base, compressor=hyco_core).invoke(QUERY, k=k)
    with pytest.raises(ValueError, match="k"):
        HyCoRetriever(base_retriever=base, compressor=hyco_core, k=k)


def test_output_is_compressed_and_keeps_ids_and_metadata(hyco_core: Any, vector_store: Any) -> None:
    base = vector_store.as_retriever(search_kwargs={"k": 4})
    retrieved = base.invoke(QUERY)
    output = HyCoRetriever(base_retriever=base, compressor=hyco_core, rate=0.25, drop_empty=False).invoke(QUERY)
    assert _ids(output) == _ids(retrieved)
    for doc, original in zip(output, retrieved):
        assert {k: v for k, v in doc.metadata.items() if k != "hyco"} == original.metadata
        assert doc.metadata is not original.metadata
    assert sum(d.metadata["hyco"]["compressed_tokens"] for d in output) < sum(
        d.metadata["hyco"]["original_tokens"] for d in output
    )


async def test_ainvoke_is_native_and_matches_invoke(monkeypatch: pytest.MonkeyPatch, hyco_core: Any, vector_store: Any) -> None:
    retriever = HyCoRetriever(base_retriever=vector_store.as_retriever(), compressor=hyco_core, rate=0.5, k=3, drop_empty=False)
    expected = retriever.invoke(QUERY)

    monkeypatch.setattr(HyCoCompressor, "compress_documents", sync_path_forbidden)
    monkeypatch.setattr(type(vector_store), "similarity_search", sync_path_forbidden)
    result = await retriever.ainvoke(QUERY)
    assert [(d.id, d.page_content) for d in result] == [(d.id, d.page_content) for d in expected]
    assert len(await retriever.ainvoke(QUERY, k=2)) == 2


def test_options_build_the_compressor(hyco_core: Any, vector_store: Any) -> None:
    base = vector_store.as_retriever()
    retriever = HyCoRetriever(base_retriever=base, compressor=hyco_core, target_tokens=40, reorder=True)
    assert isinstance(retriever.compressor, HyCoCompressor)
    assert retriever.compressor.core is hyco_core
    assert (retriever.compressor.target_tokens, retriever.compressor.reorder) == (40, True)
    lazy = HyCoRetriever(base_retriever=base, rate=0.3)
    assert lazy.compressor.rate == 0.3 and not lazy.compressor._loader.loaded  # nothing loaded yet
    with pytest.raises(ValueError, match="not both"):
        HyCoRetriever(base_retriever=base, compressor=HyCoCompressor(compressor=hyco_core), rate=0.5)
    with pytest.raises(ValueError, match="finite"):
        HyCoRetriever(base_retriever=base, compressor=hyco_core, rate=float("nan"))


class FirstOnly(BaseDocumentCompressor):
    def compress_documents(self, documents: Any, query: str, callbacks: Any = None) -> list[Document]:
        return list(documents)[:1]


def test_other_document_compressors_are_pointed_elsewhere(vector_store: Any) -> None:
    other = FirstOnly()
    with pytest.raises(TypeError, match="ContextualCompressionRetriever"):
        HyCoRetriever(base_retriever=vector_store.as_retriever(), compressor=other)


def test_in_an_lcel_chain(hyco_core: Any, vector_store: Any) -> None:
    retriever = HyCoRetriever(base_retriever=vector_store.as_retriever(), compressor=hyco_core, rate=0.5, k=2)
    chain = retriever | RunnableLambda(lambda docs: [d.metadata["hyco"]["compressed_tokens"] for d in docs])
    counts = chain.invoke(QUERY)
    assert len(counts) <= 2 and all(count > 0 for count in counts)
    assert chain.batch([QUERY, QUERY]) == [counts, counts]


def test_drop_empty_leaves_out_exactly_what_compressed_to_nothing(hyco_core: Any, vector_store: Any) -> None:
    base = vector_store.as_retriever()
    kept_all = HyCoRetriever(base_retriever=base, compressor=hyco_core, target_tokens=30, k=5)  # default: keep
    dropping = HyCoRetriever(base_retriever=base, compressor=hyco_core, target_tokens=30, drop_empty=True, k=5)
    everything = kept_all.invoke(QUERY)
    assert len(everything) == 5  # k=5 returns 5 documents, although the budget empties some
    assert all(d.metadata["hyco"]["dropped"] == (not d.page_content.strip()) for d in everything)
    survivors = [d.id for d in everything if d.page_content.strip()]
    assert 0 < len(survivors) < 5  # one budget of 30 tokens cannot cover five passages
    assert [d.id for d in dropping.invoke(QUERY)] == survivors


def test_k_means_documents_returned_and_sources_are_kept(hyco_core: Any, vector_store: Any) -> None:
    """k=4 gives 4 documents (ids, metadata, order kept) even when the budget empties some."""
    base = vector_store.as_retriever()
    plain = base.invoke(QUERY, k=4)
    for retriever in (
        HyCoRetriever(base_retriever=base, compressor=hyco_core, target_tokens=20, k=4),
        HyCoRetriever(
            base_retriever=base, compressor=HyCoCompressor(compressor=hyco_core, target_tokens=20, drop_empty=False), k=4
        ),
    ):
        out = retriever.invoke(QUERY)
        assert [d.id for d in out] == [d.id for d in plain]
        assert any(d.metadata["hyco"]["dropped"] for d in out)  # 20 tokens cannot cover four passages
        for doc, original in zip(out, plain):
            assert {k: v for k, v in doc.metadata.items() if k != "hyco"} == original.metadata
    assert HyCoRetriever(base_retriever=base, compressor=hyco_core, rate=0.5).compressor.drop_empty is False
