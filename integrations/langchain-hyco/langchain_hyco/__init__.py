"""LangChain integration for hyco-rag."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("langchain-hyco")
except PackageNotFoundError:  # source tree without an install
    __version__ = "0.0.0+local"

__all__ = [
    "__version__",
]
