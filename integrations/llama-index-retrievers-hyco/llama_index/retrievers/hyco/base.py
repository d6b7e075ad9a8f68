"""A LlamaIndex retriever that retrieves and HyCo-compresses in one call.

`HyCoRetriever` wraps any LlamaIndex retriever and runs what it returns through a
:class:`~llama_index.postprocessor.hyco.HyCoNodePostprocessor`. Use it where a retriever is
expected (``RetrieverQueryEngine``, a chat engine, an agent tool) and compression should come
with it; inside a query engine, ``node_postprocessors=[HyCoNodePostprocessor(...)]`` is the
same thing.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.postprocessor.hyco import HyCoNodePostprocessor

__all__ = ["HyCoRetriever"]


class HyCoRetriever(BaseRetriever):
    """Retrieve with ``retriever``, then compress each node's text with HyCo.

    Example:
        ```python
        from llama_index.retrievers.hyco import HyCoRetriever

        retriever = HyCoRetriever(index.as_retriever(similarity_top_k=5), rate=0.25)
        nodes = retriever.retrieve("Who won Super Bowl 50?")
        nodes = await retriever.aretrieve("Who won Super Bowl 50?")  # native async
        ```

    Args:
        retriever: the LlamaIndex retriever to wrap. Its own ``similarity_top_k`` decides how
            many nodes come back, and all of them are returned: a node whose text compresses to
            nothing keeps its id, score and metadata, with empty text and
            ``metadata["hyco"]["dropped"] = True`` (so this retriever defaults to
            ``drop_empty=False``; pass ``drop_empty=True`` to leave such nodes out, which is
            LangChain ``EmbeddingsFilter``'s "at most k" convention).
        postprocessor: a ready `HyCoNodePostprocessor` (to share one loaded model); or give
            its options (``rate``, ``target_tokens``, ``compressor``, ...) as keywords.
        callback_manager: LlamaIndex callbacks; the wrapped retriever's when not given.
    """

    def __init__(
        self,
        retriever: BaseRetriever,
        postprocessor: HyCoNodePostprocessor | None = None,
        *,
        callback_manager: CallbackManager | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(retriever, BaseRetriever):
            raise TypeError(f"retriever must be a LlamaIndex BaseRetriever, got {type(retriever).__name__}")
        if postprocessor is not None and options:
            raise ValueError(
                f"give the options ({', '.join(sorted(options))}) to HyCoNodePostprocessor(...) or to HyCoRetriever, not both"
            )
        if postprocessor is not None and not isinstance(postprocessor, HyCoNodePostprocessor):
            raise TypeError(f"postprocessor must be a HyCoNodePostprocessor, got {type(postprocessor).__name__}")
        self._retriever = retriever
        if postprocessor is None:
            options.setdefault("drop_empty", False)  # similarity_top_k nodes in, as many out
            postprocessor = HyCoNodePostprocessor(**options)
        self._postprocessor = postprocessor
        super().__init__(callback_manager=callback_manager or retriever.callback_manager)

    @property
    def retriever(self) -> BaseRetriever:
        """The wrapped retriever."""
        return self._retriever

    @property
    def postprocessor(self) -> HyCoNodePostprocessor:
        """The HyCo postprocessor applied to the retrieved nodes."""
        return self._postprocessor

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        nodes = self._retriever.retrieve(query_bundle)
        if not nodes:
            return []
        return self._postprocessor.postprocess_nodes(nodes, query_bundle=query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        nodes = await self._retriever.aretrieve(query_bundle)
        if not nodes:
            return []
        return await self._postprocessor.apostprocess_nodes(nodes, query_bundle=query_bundle)
