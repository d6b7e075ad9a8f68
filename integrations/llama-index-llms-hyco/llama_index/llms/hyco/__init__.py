"""LlamaIndex llms of hyco-rag."""

from llama_index.llms.hyco.base import DocumentBinding, HyCoLLM, bind_documents, current_binding

__all__: list[str] = ["DocumentBinding", "HyCoLLM", "bind_documents", "current_binding"]
