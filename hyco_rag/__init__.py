"""hyco-rag: cheaper, more accurate RAG.

The core is framework-agnostic and imports neither LangChain nor LlamaIndex; heavy modules
(models, compression, DyPRAG) are imported where used so ``import hyco_rag`` stays fast.
Data flows one way: retrieve -> compress / translate -> apply -> generate.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hyco-rag")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
