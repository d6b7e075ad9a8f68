"""HyCo2's global view: a context becomes a few soft tokens for a model we serve.

``HybridAdapter`` (MLP branch with grouped local attention + Q-Former branch, fused by a noisy
gate, both attending to the instruction) reads the served model's own token states of the
passages (:class:`TokenStates`) and writes ``k`` soft tokens; the engine's ``hybrid`` mode puts
them before the compressor's kept text (:mod:`hyco_rag.hybrid.soft`).  Trained by
``hyco-rag train hybrid`` (:mod:`hyco_rag.hybrid.training`).
"""

from hyco_rag.hybrid.adapter import DEFAULT_ADAPTER_DIR, AdapterMismatchError, HybridAdapter
from hyco_rag.hybrid.config import BRANCHES, HybridConfig
from hyco_rag.hybrid.features import TokenStates
from hyco_rag.hybrid.soft import SOFT_MARKER, SoftContext, soft_prompt_ids

__all__ = [
    "BRANCHES",
    "DEFAULT_ADAPTER_DIR",
    "SOFT_MARKER",
    "AdapterMismatchError",
    "HybridAdapter",
    "HybridConfig",
    "SoftContext",
    "TokenStates",
    "soft_prompt_ids",
]
