"""LlamaIndex llms of hyco-rag."""

__all__: list[str] = []
