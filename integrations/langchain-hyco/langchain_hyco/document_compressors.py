"""HyCo as a LangChain document compressor.

`HyCoCompressor` shrinks retrieved documents with the query-aware HyCo model of
:mod:`hyco_rag.compression`. It plugs in wherever LangChain takes a
`BaseDocumentCompressor` (`ContextualCompressionRetriever`, `DocumentCompressorPipeline`) and
is itself a runnable, so it also works as a step of an LCEL chain.

What it promises, because today's LLMLingua wrapper does not:

- the model is built lazily on first use (never in a validator), on the auto-detected device;
- every output document keeps its `id`, gets a *copy* of the input metadata plus
  ``metadata["hyco"]`` stats, and the input order is kept unless ``reorder=True``;
- a document is left out only when it compresses to nothing and ``drop_empty=True``;
- `acompress_documents` is native async: it awaits the core `acompress`, which batches
  concurrent calls, instead of running the sync method in a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator
from typing_extensions import Self, TypedDict

from hyco_rag.compression.adapters import (
    LazyCompressor,
    check_adapter_options,
    compress_options,
    reject_boolean,
)
from hyco_rag.compression.chain import MAX_HOPS
from hyco_rag.metadata import copy_metadata

logger = logging.getLogger(__name__)

__all__ = ["HyCoCompressor", "HyCoCompressorInput"]


class HyCoCompressorInput(TypedDict):
    """Input of `HyCoCompressor` used as a runnable: the query and the documents to shrink."""

    query: str
    documents: Sequence[Document | str]


class HyCoCompressor(BaseDocumentCompressor, RunnableSerializable[HyCoCompressorInput, list[Document]]):
    """Query-aware HyCo compression of retrieved documents.

    Example:
        ```python
        from langchain_classic.retrievers import ContextualCompressionRetriever
        from langchain_hyco import HyCoCompressor

        compressor = HyCoCompressor(rate=0.25)  # nothing is loaded yet
        retriever = ContextualCompressionRetriever(
            base_compressor=compressor, base_retriever=vector_store.as_retriever()
        )
        docs = retriever.invoke("Who won Super Bowl 50?")
        docs[0].metadata["hyco"]  # {"original_tokens": ..., "compressed_tokens": ..., ...}
        ```

    As an LCEL step it takes ``{"query": str, "documents": [Document | str, ...]}``:

        ```python
        chain = {"query": RunnablePassthrough(), "documents": retriever} | compressor
        ```

    At most one of ``rate``, ``target_tokens`` and ``threshold`` picks the budget; with none,
    the core compressor's default budget applies.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model_name_or_path: str | None = None
    """Folder written by the core `HyCoCompressor.save_pretrained`; None: the shipped weights."""
    device: str | None = None
    """Torch device for the model; None: auto-detected (a GPU when there is one)."""
    compressor: Any = Field(default=None, exclude=True, repr=False)
    """An already-built `hyco_rag.compression.HyCoCompressor` to use instead of loading one
    (share one model between several wrappers)."""

    rate: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    """Fraction of the tokens to keep, e.g. 0.25 for 4x fewer tokens."""
    target_tokens: int | None = Field(default=None, ge=1, strict=True)
    """One token budget across all documents of a call."""
    threshold: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    """Keep every word whose keep score reaches this value (no fixed budget)."""
    target_tokenizer: Any = Field(default=None, exclude=True)
    """Tokenizer (or its name) of the LLM that reads the output: budgets and stats are counted
    in its tokens. None: the compressor's own tokenizer."""
    min_tokens_per_passage: int = Field(default=0, ge=0, strict=True)
    """Floor of tokens kept from each document."""
    drop_empty: bool = True
    """Leave out documents that compress to nothing (else they come back with empty text)."""
    reorder: bool = False
    """Return the documents most relevant first instead of in the input order."""
    force_tokens: tuple[str, ...] = ()
    """Words always kept wherever they occur."""
    hops: int = Field(default=1, ge=1, le=MAX_HOPS, strict=True)
    """Evidence-chain hops for multi-hop questions: each further hop rescores the documents for
    the question plus the bridge terms found so far (one more scoring pass each)."""
    metadata_key: str = "hyco"
    """Key of the stats added to each output document's metadata."""

    _loader: LazyCompressor = PrivateAttr(default_factory=LazyCompressor)

    @field_validator("rate", "threshold", "target_tokens", mode="before")
    @classmethod
    def _no_boolean_budget(cls, value: Any, info: Any) -> Any:
        return reject_boolean(value, info.field_name)

    @model_validator(mode="after")
    def _check_options(self) -> Self:
        check_adapter_options(self)
        if not self.metadata_key:
            raise ValueError("metadata_key must be a non-empty string")
        return self

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    # -- the core model, built once on first use ------------------------------------------------
    @property
    def core(self) -> Any:
        """The core `hyco_rag.compression.HyCoCompressor`: ``compressor``, or loaded on first access."""
        return self._loader.core_for(self)

    # -- BaseDocumentCompressor --------------------------------------------------------------
    @staticmethod
    def _texts(documents: Sequence[Document]) -> list[str]:
        if isinstance(documents, (str, Document)):
            raise TypeError("documents must be a sequence of Document objects, not a single one")
        texts = []
        for position, document in enumerate(documents):
            if not isinstance(document, Document):
                raise TypeError(f"documents[{position}] is a {type(document).__name__}, expected a Document")
            texts.append(document.page_content)
        return texts

    def _to_documents(self, documents: Sequence[Document], result: Any) -> list[Document]:
        passages = list(result.passages)
        if not self.reorder:  # the core keeps input order; sorting makes the promise hold here too
            passages.sort(key=lambda passage: passage.index)
        output = []
        for passage in passages:
            if self.drop_empty and (passage.dropped or not passage.text.strip()):
                continue
            original = documents[passage.index]
            metadata = copy_metadata(original.metadata)
            metadata[self.metadata_key] = passage.stats()
            output.append(original.model_copy(update={"page_content": passage.text, "metadata": metadata}))
        return output

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Compress ``documents`` for ``query``: one output per input, in order, stats in metadata."""
        texts = self._texts(documents)
        if not texts:
            return []
        result = self.core.compress(query, texts, **compress_options(self))
        return self._to_documents(documents, result)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async `compress_documents`: awaits the core, which batches concurrent requests."""
        texts = self._texts(documents)
        if not texts:
            return []
        core = await self._loader.acore_for(self)  # loading reads weights: off the event loop
        result = await core.acompress(query, texts, **compress_options(self))
        return self._to_documents(documents, result)

    # -- Runnable ------------------------------------------------------------------------------
    @staticmethod
    def _parse_input(value: Any) -> tuple[str, list[Document]]:
        if not isinstance(value, Mapping) or "query" not in value or "documents" not in value:
            raise TypeError(
                "HyCoCompressor as a runnable takes a mapping {'query': str, 'documents': [Document | str, ...]}; "
                f"got {type(value).__name__}" + (f" with keys {sorted(map(str, value))}" if isinstance(value, Mapping) else "")
            )
        documents = value["documents"]
        if isinstance(documents, (str, Document)) or not isinstance(documents, Sequence):
            raise TypeError(f"'documents' must be a list of Document or str, got {type(documents).__name__}")
        converted = [Document(page_content=item) if isinstance(item, str) else item for item in documents]
        return value["query"], cast(list[Document], converted)

    def invoke(self, input: HyCoCompressorInput, config: RunnableConfig | None = None, **kwargs: Any) -> list[Document]:
        def run(value: HyCoCompressorInput) -> list[Document]:
            query, documents = self._parse_input(value)
            return list(self.compress_documents(documents, query))

        return self._call_with_config(run, input, config)

    async def ainvoke(self, input: HyCoCompressorInput, config: RunnableConfig | None = None, **kwargs: Any) -> list[Document]:
        async def run(value: HyCoCompressorInput) -> list[Document]:
            query, documents = self._parse_input(value)
            return list(await self.acompress_documents(documents, query))

        return await self._acall_with_config(run, input, config)
