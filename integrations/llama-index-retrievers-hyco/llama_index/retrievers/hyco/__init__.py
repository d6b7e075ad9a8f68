"""LlamaIndex retrievers of hyco-rag."""

from llama_index.retrievers.hyco.base import HyCoRetriever

__all__: list[str] = ["HyCoRetriever"]
