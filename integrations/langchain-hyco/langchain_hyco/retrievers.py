"""A retriever that retrieves and HyCo-compresses in one call.

`HyCoRetriever` wraps any LangChain retriever (or any runnable from a query to documents),
then shrinks what it returns with a :class:`~langchain_hyco.HyCoCompressor`. It is the
one-object form of ``ContextualCompressionRetriever(base_compressor=HyCoCompressor(...))``,
plus a ``k`` that is honoured both in the constructor and per call.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever, RetrieverLike
from langchain_core.runnables import Runnable
from pydantic import ConfigDict, Field, model_validator

from langchain_hyco.document_compressors import HyCoCompressor

__all__ = ["HyCoRetriever"]

_COMPRESSOR_FIELDS = frozenset(HyCoCompressor.model_fields) - {"compressor"}


def _check_k(k: Any, where: str) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{where} k must be a positive integer, got {k!r}")
    return k


class HyCoRetriever(BaseRetriever):
    """Retrieve with ``base_retriever``, then compress the documents with HyCo.

    Example:
        ```python
        from langchain_hyco import HyCoRetriever

        retriever = HyCoRetriever(base_retriever=vector_store.as_retriever(), k=5, rate=0.25)
        docs = retriever.invoke("Who won Super Bowl 50?")        # 5 documents, 4x fewer tokens
        docs = await retriever.ainvoke("Who won Super Bowl 50?", k=2)
        ```

    Budget options (``rate``, ``target_tokens``, ``threshold``, ``drop_empty``, ...; see
    :class:`~langchain_hyco.HyCoCompressor`) may be given directly; they build the
    ``compressor``. Or pass ``compressor=HyCoCompressor(...)`` (or an already-built core
    ``hyco_rag.compression.HyCoCompressor``) to share one loaded model.

    ``k`` (constructor or invoke keyword) is the number of documents asked of the base
    retriever **and the number returned**: ``k=4`` gives 4 documents (fewer only when the base
    retriever has fewer). It reaches the base retriever as a keyword when its
    ``_get_relevant_documents`` takes extra keywords (vector store retrievers), else through
    its ``k`` or ``search_kwargs["k"]`` field on a copy; the result is cut to ``k`` in any
    case. The budget is shared, so a document may compress to nothing: here it is still
    returned (its source, id and metadata kept, for citations), with empty ``page_content``
    and ``metadata["hyco"]["dropped"] = True``; that is why this retriever defaults to
    ``drop_empty=False``. LangChain's ``EmbeddingsFilter`` instead returns *at most* ``k``,
    leaving out what it filters; ``drop_empty=True`` gives that convention here.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base_retriever: RetrieverLike
    """Any retriever or runnable from a query string to a list of documents."""
    compressor: HyCoCompressor = Field(default_factory=lambda: HyCoCompressor(drop_empty=False))
    """The HyCo document compressor applied to what the base retriever returns (default:
    ``drop_empty=False``, so ``k`` documents come back)."""
    k: int | None = Field(default=None, ge=1, strict=True)
    """Number of documents to retrieve and return; None: the base retriever's own default."""

    @model_validator(mode="before")
    @classmethod
    def _build_compressor(cls, values: Any) -> Any:
        """Accept budget options (and a core compressor) at the top level for convenience."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        options = {name: values.pop(name) for name in list(values) if name in _COMPRESSOR_FIELDS}
        compressor = values.get("compressor")
        if isinstance(compressor, HyCoCompressor):
            if options:
                raise ValueError(
                    f"give compressor options ({', '.join(sorted(options))}) to HyCoCompressor(...) or to HyCoRetriever, not both"
                )
            return values
        if isinstance(compressor, BaseDocumentCompressor):
            raise TypeError(
                f"compressor must be a langchain_hyco.HyCoCompressor, got {type(compressor).__name__}; "
                "use langchain_classic's ContextualCompressionRetriever for other compressors"
            )
        options.setdefault("drop_empty", False)  # k documents in, k documents out
        if compressor is not None:
            options["compressor"] = compressor  # a core compressor
        if options != {"drop_empty": False} or compressor is not None:
            values["compressor"] = HyCoCompressor(**options)
        return values

    def _base_call(self, k: int | None, kwargs: dict[str, Any]) -> tuple[Runnable, dict[str, Any]]:
        """The retriever to call and its keywords, with ``k`` routed the way it understands."""
        base = self.base_retriever
        if k is None:
            return base, kwargs
        if isinstance(base, BaseRetriever):
            if base._expects_other_args:  # e.g. VectorStoreRetriever merges kwargs into search_kwargs
                return base, {**kwargs, "k": k}
            fields = type(base).model_fields
            if "k" in fields:
                return base.model_copy(update={"k": k}), kwargs
            if "search_kwargs" in fields and isinstance(getattr(base, "search_kwargs", None), dict):
                return base.model_copy(update={"search_kwargs": {**base.search_kwargs, "k": k}}), kwargs
        return base, kwargs  # cannot ask for k: cut the result below

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        k = _check_k(k, "invoke") or self.k
        base, base_kwargs = self._base_call(k, kwargs)
        documents = base.invoke(query, config={"callbacks": run_manager.get_child()}, **base_kwargs)
        documents = list(documents)[:k] if k is not None else list(documents)
        if not documents:
            return []
        return list(self.compressor.compress_documents(documents, query, callbacks=run_manager.get_child()))

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        k = _check_k(k, "invoke") or self.k
        base, base_kwargs = self._base_call(k, kwargs)
        documents = await base.ainvoke(query, config={"callbacks": run_manager.get_child()}, **base_kwargs)
        documents = list(documents)[:k] if k is not None else list(documents)
        if not documents:
            return []
        return list(await self.compressor.acompress_documents(documents, query, callbacks=run_manager.get_child()))
