"""Test support for code built on the HyCo compressor (our LangChain / LlamaIndex packages, or yours).

Integration test suites need the same few things: a real compressor without the network, a
small real corpus to retrieve from, a real embedding model in the framework's own type, and a
way to prove that an async path really awaited the core's ``acompress``.  They live here once,
the way ``langchain_tests`` ships its helpers, so each suite's ``conftest.py`` is a few lines:

    from hyco_rag.compression.testing import build_test_compressor, demo_passages, langchain_embeddings

Nothing here imports LangChain or LlamaIndex at import time; :func:`langchain_embeddings` and
:func:`llama_index_embedding` import their framework when called.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyco_rag.compression.compressor import HyCoCompressor
    from hyco_rag.data import Passage

__all__ = [
    "DEMO_TITLES",
    "build_test_compressor",
    "demo_passages",
    "embed_texts",
    "hyco_core_fixture",
    "langchain_embeddings",
    "llama_index_demo_index",
    "llama_index_embedding",
    "llama_index_fixtures",
    "llama_index_offline_llm",
    "record_acompress",
    "sync_path_forbidden",
]

#: Two demo-corpus articles: enough to retrieve among, small enough to embed in a second or two.
DEMO_TITLES = ("Super Bowl 50", "Nikola Tesla")


def build_test_compressor(
    directory: str | Path | None = None, *, random_weights: bool = False, seed: int = 0, device: str | None = None
) -> HyCoCompressor:
    """A real core compressor, offline.

    By default the shipped weights.  With ``random_weights=True`` (or when the package ships no
    weights) the heads are randomly initialised with ``seed`` on the embedded MiniLM backbone,
    written with ``save_pretrained`` into ``directory`` and read back with ``from_pretrained``, so
    the save/load round trip is exercised too.  Random heads keep plumbing tests independent of
    what training produced; they still compress to exact budgets.
    """
    import torch

    from hyco_rag.compression.compressor import SHIPPED_DIR, HyCoCompressor, build_scorer
    from hyco_rag.compression.config import CompressorConfig

    if not random_weights and (SHIPPED_DIR / "config.json").is_file():
        return HyCoCompressor.from_pretrained(None, device=device)
    if directory is None:
        raise ValueError("random weights are written to a folder first: pass directory= (e.g. a pytest tmp_path)")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = CompressorConfig()
        scorer, tokenizer = build_scorer(config)
    folder = HyCoCompressor.from_scorer(config, scorer, tokenizer).save_pretrained(Path(directory) / "compressor")
    return HyCoCompressor.from_pretrained(folder, device=device)


def demo_passages(titles: Sequence[str] = DEMO_TITLES, per_title: int = 12) -> list[Passage]:
    """The first ``per_title`` paragraphs of each demo-corpus article in ``titles`` (in that order)."""
    from hyco_rag.data import load_demo_corpus

    if isinstance(titles, str):
        raise ValueError("titles must be a list of article titles, not one string")
    by_title: dict[str, list[Passage]] = {}
    for passage in load_demo_corpus():
        by_title.setdefault(passage.title, []).append(passage)
    missing = [t for t in titles if t not in by_title]
    if missing:
        raise ValueError(f"no demo-corpus article titled {missing}; there are {sorted(by_title)}")
    return [p for title in titles for p in by_title[title][:per_title]]


@functools.lru_cache(maxsize=1)
def _default_encoder() -> Any:
    from hyco_rag.models import load_sentence_encoder

    return load_sentence_encoder()


def embed_texts(texts: Sequence[str], encoder: Any | None = None) -> list[list[float]]:
    """Normalised (cosine-ready) sentence embeddings, by default of the embedded all-MiniLM-L6-v2."""
    encoder = encoder if encoder is not None else _default_encoder()
    return encoder.encode(list(texts), normalize_embeddings=True, batch_size=32).tolist()


def langchain_embeddings(encoder: Any | None = None) -> Any:
    """:func:`embed_texts` as a LangChain ``Embeddings`` (imports ``langchain_core``)."""
    from langchain_core.embeddings import Embeddings

    class MiniLMEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embed_texts(texts, encoder)

        def embed_query(self, text: str) -> list[float]:
            return embed_texts([text], encoder)[0]

    return MiniLMEmbeddings()


def llama_index_embedding(encoder: Any | None = None) -> Any:
    """:func:`embed_texts` as a LlamaIndex ``BaseEmbedding`` (imports ``llama_index.core``)."""
    from llama_index.core.base.embeddings.base import BaseEmbedding

    class MiniLMEmbedding(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return embed_texts([query], encoder)[0]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return embed_texts([text], encoder)[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return embed_texts(texts, encoder)

    return MiniLMEmbedding(model_name="all-MiniLM-L6-v2")


def llama_index_demo_index(embed_model: Any | None = None) -> Any:
    """A LlamaIndex ``VectorStoreIndex`` (in-memory ``SimpleVectorStore``) over :func:`demo_passages`.

    Each node keeps a ``SOURCE`` relationship to its document and ``title`` / ``tags`` metadata,
    so adapters can be checked for keeping ids, relationships and metadata.
    """
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.core.vector_stores import SimpleVectorStore

    documents = [
        Document(text=p.text, id_=f"demo-{p.id}", metadata={"title": p.title, "tags": ["demo", p.id]}) for p in demo_passages()
    ]
    storage = StorageContext.from_defaults(vector_store=SimpleVectorStore())
    return VectorStoreIndex.from_documents(
        documents, storage_context=storage, embed_model=embed_model if embed_model is not None else llama_index_embedding()
    )


@contextlib.contextmanager
def llama_index_offline_llm() -> Iterator[None]:
    """``Settings.llm`` is LlamaIndex's ``MockLLM`` inside the block (nothing falls back to a
    hosted LLM); the previous setting comes back after."""
    from llama_index.core import Settings
    from llama_index.core.llms import MockLLM

    previous = Settings._llm
    Settings.llm = MockLLM()
    try:
        yield
    finally:
        Settings._llm = previous


def hyco_core_fixture() -> Any:
    """A session-scoped pytest fixture ``hyco_core``: :func:`build_test_compressor`, loaded once.

    In a ``conftest.py``: ``hyco_core = hyco_core_fixture()``.
    """
    import pytest

    @pytest.fixture(scope="session")
    def hyco_core(tmp_path_factory: Any) -> Any:
        return build_test_compressor(tmp_path_factory.mktemp("hyco-compressor"))

    return hyco_core


def llama_index_fixtures() -> tuple[Any, Any, Any]:
    """The fixtures of a LlamaIndex adapter suite: ``(_offline_llm, hyco_core, index)``.

    ``_offline_llm`` (session, autouse) keeps ``Settings.llm`` on the MockLLM;
    ``index`` is :func:`llama_index_demo_index`, built once.  In a ``conftest.py``:
    ``_offline_llm, hyco_core, index = llama_index_fixtures()``.
    """
    import pytest

    @pytest.fixture(scope="session", autouse=True)
    def _offline_llm() -> Iterator[None]:
        with llama_index_offline_llm():
            yield

    @pytest.fixture(scope="session")
    def index() -> Any:
        return llama_index_demo_index()

    return _offline_llm, hyco_core_fixture(), index


def record_acompress(monkeypatch: Any, core: Any) -> list[str]:
    """Wrap ``core.acompress`` (via pytest's ``monkeypatch``) to record each query it awaits.

    The returned list grows by one query per awaited call, which proves that an adapter's
    async path went through the core's own batching ``acompress``.
    """
    awaited: list[str] = []
    original = core.acompress

    async def spy(query: str, texts: Any, **options: Any) -> Any:
        awaited.append(query)
        return await original(query, texts, **options)

    monkeypatch.setattr(core, "acompress", spy)
    return awaited


def sync_path_forbidden(*args: Any, **kwargs: Any) -> Any:
    """Monkeypatch this over a sync method to prove an async path never calls it."""
    raise AssertionError("the async path went through the sync code")
