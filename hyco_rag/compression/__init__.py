"""HyCo compression: query-aware hybrid (local word + global sentence/passage) compression of
retrieved passages into readable text for any LLM.

    from hyco_rag.compression import HyCoCompressor
    result = HyCoCompressor().compress(query, documents, rate=0.125)
    result.texts  # compressed documents, input order

See ``docs/compression.md``.
"""

from hyco_rag.compression.config import CompressorConfig
from hyco_rag.compression.result import CompressedPassage, CompressionResult

__all__ = ["CompressedPassage", "CompressionResult", "CompressorConfig", "HyCoCompressor"]


def __getattr__(name: str):
    # The compressor pulls in torch/transformers; import it on first use so that
    # `from hyco_rag.compression import CompressorConfig` stays light.
    if name == "HyCoCompressor":
        from hyco_rag.compression.compressor import HyCoCompressor

        return HyCoCompressor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
