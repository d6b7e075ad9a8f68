"""LangChain integration for hyco-rag."""

from importlib.metadata import PackageNotFoundError, version

from langchain_hyco.chat_models import ChatHyCo
from langchain_hyco.document_compressors import HyCoCompressor
from langchain_hyco.retrievers import HyCoRetriever

try:
    __version__ = version("langchain-hyco")
except PackageNotFoundError:  # source tree without an install
    __version__ = "0.0.0+local"

__all__ = [
    "ChatHyCo",
    "HyCoCompressor",
    "HyCoRetriever",
    "__version__",
]
