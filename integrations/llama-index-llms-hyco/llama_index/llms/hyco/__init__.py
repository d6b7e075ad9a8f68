"""LlamaIndex llms of hyco-rag."""

from llama_index.llms.hyco.base import (
    DocumentBinding,
    HyCoLLM,
    PassagesMissingWarning,
    bind_documents,
    current_binding,
    documents_bound,
    release_binding,
)

__all__: list[str] = [
    "DocumentBinding",
    "HyCoLLM",
    "PassagesMissingWarning",
    "bind_documents",
    "current_binding",
    "documents_bound",
    "release_binding",
]
