"""Shared fixtures of the langchain-hyco tests: one real HyCo model and one MiniLM vector store.

Everything is real and offline (see :mod:`hyco_rag.compression.testing`): the core compressor
with the shipped weights, the embedded all-MiniLM-L6-v2 as a LangChain `Embeddings`, and two
articles of the demo corpus that ships inside `hyco_rag`.
"""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from hyco_rag.compression.testing import demo_passages, hyco_core_fixture, langchain_embeddings

hyco_core = hyco_core_fixture()


def corpus_documents() -> list[Document]:
    return [
        Document(page_content=p.text, id=f"demo-{p.id}", metadata={"title": p.title, "source": {"corpus": "demo", "id": p.id}})
        for p in demo_passages()
    ]


@pytest.fixture(scope="session")
def vector_store() -> InMemoryVectorStore:
    store = InMemoryVectorStore(embedding=langchain_embeddings())
    store.add_documents(corpus_documents())
    return store
