"""The simple compressors HyCo is compared with, each budgeted in the reader's tokens.

Every baseline gets the same budget as HyCo: ``floor(rate * tokens_in)`` reader tokens for a
question's documents together (:mod:`hyco_rag.evaluation.budget`). Each fills it as well as
its own rule allows and never exceeds it, so "F1 at 1/8" means the same number of tokens for
every method.

- :class:`RandomWordDrop`: keep a random subset of words (seeded per question). The floor any
  learned method must clear.
- :class:`EmbeddingsFilterBaseline`: LangChain's ``EmbeddingsFilter`` with MiniLM embeddings:
  rank whole documents by cosine similarity to the query, keep the top ones. The real
  ``langchain_classic`` class is used when ``langchain_community`` (which it imports at call
  time) is installed, else a re-implementation of the same rule (``argsort`` of the cosine, top
  first); ``implementation`` says which ran. A budget adapter keeps documents in that order
  while they fit and fills the rest with the head of the next one (cut at a word boundary),
  since a whole-document filter cannot otherwise meet budgets below one passage.
- :class:`SentenceSelection`: split into sentences, rank them by MiniLM cosine similarity to the
  query, keep the best that fit, in their original order.

Work that does not depend on the budget (embedding, splitting) happens in :meth:`prepare`, so a
benchmark can sweep rates without re-embedding; its time is charged to every rate.
"""

from __future__ import annotations

import logging
import random
import warnings
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hyco_rag.evaluation.budget import TokenCounter, split_sentences, split_words, truncate_to_budget

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


def _check_inputs(query: str, documents: Sequence[str]) -> list[str]:
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}")
    if isinstance(documents, str):
        raise TypeError("documents must be a sequence of strings, not one string")
    documents = list(documents)
    for i, document in enumerate(documents):
        if not isinstance(document, str):
            raise TypeError(f"documents[{i}] must be a string, got {type(document).__name__}")
    return documents


def _check_budget(budget: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise TypeError(f"budget must be an integer number of tokens, got {type(budget).__name__}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0 tokens, got {budget}")
    return int(budget)


@dataclass
class Units:
    """Text units (words or sentences) of a question's documents, with reader-token costs.

    ``priority`` lists unit indices best first; :func:`fill` keeps units in that order.
    """

    doc: list[int]
    text: list[str]
    cost: list[int]
    num_documents: int
    priority: list[int] = field(default_factory=list)

    def rebuild(self, kept: set[int]) -> list[str]:
        """Documents made of the kept units, in their original order, joined by spaces."""
        pieces: list[list[str]] = [[] for _ in range(self.num_documents)]
        for index in sorted(kept):
            pieces[self.doc[index]].append(self.text[index])
        return [" ".join(piece) for piece in pieces]


def fill(units: Units, budget: int, counter: TokenCounter) -> list[str]:
    """Keep units in priority order while they fit (skipping those that do not), then verify.

    Per-unit costs are estimates (BPE merges across a join can differ by a token); if the
    rebuilt documents exceed the budget, the lowest-priority kept units are dropped until they
    fit, so the budget is never exceeded.
    """
    kept: list[int] = []
    used = 0
    for index in units.priority:
        if used + units.cost[index] <= budget:
            kept.append(index)
            used += units.cost[index]
    kept_set = set(kept)
    documents = units.rebuild(kept_set)
    while kept and counter.total(documents) > budget:
        kept_set.discard(kept.pop())
        documents = units.rebuild(kept_set)
    return documents


class BudgetedCompressor(ABC):
    """A compressor that keeps at most ``budget`` reader tokens of a question's documents."""

    name: str = "baseline"

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter

    @abstractmethod
    def prepare(self, query: str, documents: Sequence[str]) -> Any:
        """Budget-independent work (splitting, embedding, ranking)."""

    @abstractmethod
    def select(self, prepared: Any, budget: int) -> list[str]:
        """The documents to give the reader (empty strings are dropped by the prompt builder)."""

    def compress(self, query: str, documents: Sequence[str], budget: int) -> list[str]:
        documents = _check_inputs(query, documents)
        return self.select(self.prepare(query, documents), _check_budget(budget))


class RandomWordDrop(BudgetedCompressor):
    """Keep a random subset of words filling the budget; seeded by the query, so reproducible."""

    name = "random"

    def __init__(self, counter: TokenCounter, seed: int = 0) -> None:
        super().__init__(counter)
        self.seed = seed

    def prepare(self, query: str, documents: Sequence[str]) -> Units:
        documents = _check_inputs(query, documents)
        doc, text = [], []
        for d, document in enumerate(documents):
            for word in split_words(document):
                doc.append(d)
                text.append(word)
        # A word inside running text is tokenized with its leading space.
        cost = self.counter.count_many([" " + word for word in text])
        rng = random.Random(zlib.crc32(query.encode("utf-8")) ^ self.seed)
        priority = list(range(len(text)))
        rng.shuffle(priority)
        return Units(doc, text, cost, len(documents), priority)

    def select(self, prepared: Units, budget: int) -> list[str]:
        return fill(prepared, _check_budget(budget), self.counter)


class _Encoder:
    """MiniLM sentence embeddings, L2-normalised so a dot product is the cosine."""

    def __init__(self, model: SentenceTransformer | None = None, batch_size: int = 64) -> None:
        if model is None:
            from hyco_rag.models import load_sentence_encoder

            model = load_sentence_encoder()
        self.model = model
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.get_sentence_embedding_dimension() or 384), dtype=np.float32)
        return self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )


class SentenceSelection(BudgetedCompressor):
    """Top sentences by MiniLM cosine similarity to the query, kept in document order."""

    name = "sentence_selection"

    def __init__(self, counter: TokenCounter, encoder: SentenceTransformer | None = None) -> None:
        super().__init__(counter)
        self.encoder = _Encoder(encoder)

    def prepare(self, query: str, documents: Sequence[str]) -> Units:
        documents = _check_inputs(query, documents)
        doc, text = [], []
        for d, document in enumerate(documents):
            for sentence in split_sentences(document):
                doc.append(d)
                text.append(sentence)
        cost = self.counter.count_many([" " + sentence for sentence in text])
        if text:
            embeddings = self.encoder.encode([query, *text])
            scores = embeddings[1:] @ embeddings[0]
            priority = [int(i) for i in np.argsort(-scores, kind="stable")]
        else:
            priority = []
        return Units(doc, text, cost, len(documents), priority)

    def select(self, prepared: Units, budget: int) -> list[str]:
        return fill(prepared, _check_budget(budget), self.counter)


def sentence_transformer_embeddings(model: SentenceTransformer) -> Any:
    """A LangChain ``Embeddings`` over a loaded SentenceTransformer (no normalisation, like
    ``HuggingFaceEmbeddings``' default; ``EmbeddingsFilter`` takes the cosine itself)."""
    from langchain_core.embeddings import Embeddings

    class SentenceTransformerEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return model.encode(list(texts), convert_to_numpy=True, show_progress_bar=False).tolist()

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    return SentenceTransformerEmbeddings()


def _langchain_ranker(model: SentenceTransformer) -> Callable[[str, list[str]], list[int]] | None:
    """Rank documents with the real ``langchain_classic`` EmbeddingsFilter, if importable."""
    try:
        with warnings.catch_warnings():  # langchain-community warns that it is being sunset
            warnings.simplefilter("ignore", DeprecationWarning)
            from langchain_classic.retrievers.document_compressors import EmbeddingsFilter
            from langchain_community.document_transformers import embeddings_redundant_filter  # noqa: F401 - used by the filter
            from langchain_community.utils.math import cosine_similarity  # noqa: F401 - used by the filter
            from langchain_core.documents import Document
    except ImportError:
        return None
    embeddings = sentence_transformer_embeddings(model)

    def rank(query: str, documents: list[str]) -> list[int]:
        nonempty = [i for i, text in enumerate(documents) if text.strip()]
        if not nonempty:
            return []
        flt = EmbeddingsFilter(embeddings=embeddings, k=len(nonempty))
        docs = [Document(page_content=documents[i], metadata={"index": i}) for i in nonempty]
        return [int(d.metadata["index"]) for d in flt.compress_documents(docs, query)]

    return rank


def reimplemented_embeddings_filter_rank(query_embedding: np.ndarray, document_embeddings: np.ndarray) -> list[int]:
    """LangChain ``EmbeddingsFilter``'s rule with ``k`` = all: cosine similarity, then
    ``np.argsort(similarity)[::-1]`` (the same call, so ties break the same way)."""
    q = query_embedding / max(float(np.linalg.norm(query_embedding)), 1e-12)
    d = document_embeddings / np.maximum(np.linalg.norm(document_embeddings, axis=1, keepdims=True), 1e-12)
    similarity = d @ q
    return [int(i) for i in np.argsort(similarity)[::-1]]


class EmbeddingsFilterBaseline(BudgetedCompressor):
    """LangChain ``EmbeddingsFilter`` (MiniLM) ranking whole documents, adapted to a budget."""

    name = "embeddings_filter"

    def __init__(
        self, counter: TokenCounter, encoder: SentenceTransformer | None = None, *, use_langchain: bool | None = None
    ) -> None:
        super().__init__(counter)
        self.encoder = _Encoder(encoder)
        ranker = _langchain_ranker(self.encoder.model) if use_langchain in (None, True) else None
        if use_langchain and ranker is None:
            raise ImportError("use_langchain=True needs langchain-classic and langchain-community installed")
        self._langchain_rank = ranker
        self.implementation = "langchain_classic.EmbeddingsFilter" if ranker else "reimplementation"

    def prepare(self, query: str, documents: Sequence[str]) -> tuple[list[str], list[int]]:
        documents = _check_inputs(query, documents)
        if self._langchain_rank is not None:
            order = self._langchain_rank(query, documents)
        else:
            nonempty = [i for i, text in enumerate(documents) if text.strip()]
            if nonempty:
                embeddings = self.encoder.encode([query, *(documents[i] for i in nonempty)], normalize=False)
                order = [nonempty[i] for i in reimplemented_embeddings_filter_rank(embeddings[0], embeddings[1:])]
            else:
                order = []
        return documents, order

    def select(self, prepared: tuple[list[str], list[int]], budget: int) -> list[str]:
        """Documents in similarity order while they fit; the next one's head fills the rest.

        The output follows the filter's order (most similar first), as ``EmbeddingsFilter``
        returns it; documents not kept are left out.
        """
        documents, order = prepared
        budget = _check_budget(budget)
        costs = self.counter.count_many([documents[i] for i in order])
        kept: list[str] = []
        left = budget
        for index, cost in zip(order, costs):
            if cost <= left:
                kept.append(documents[index])
                left -= cost
                continue
            head = truncate_to_budget(self.counter, documents[index], left)
            if head:
                kept.append(head)
            break
        return kept
