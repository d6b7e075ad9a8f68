"""LlamaIndex postprocessor of hyco-rag."""

__all__: list[str] = []
