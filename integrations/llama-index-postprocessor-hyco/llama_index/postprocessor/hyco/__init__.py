"""LlamaIndex postprocessor of hyco-rag."""

from llama_index.postprocessor.hyco.base import HyCoNodePostprocessor
from llama_index.postprocessor.hyco.parametric import DyPRAGNodePostprocessor

__all__: list[str] = ["DyPRAGNodePostprocessor", "HyCoNodePostprocessor"]
