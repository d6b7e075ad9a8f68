"""LlamaIndex retrievers of hyco-rag."""

__all__: list[str] = []
