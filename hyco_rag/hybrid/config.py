"""Shape of a hybrid adapter and the identity of the model whose context it compresses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The branches a request may force (benchmark ablations); ``None`` lets the gate fuse both.
BRANCHES: tuple[str, ...] = ("mlp", "qformer")


@dataclass
class HybridConfig:
    """How many soft tokens, how wide, and for which served model.

    Attributes:
        hidden_size: the served model's hidden size (context states in, soft tokens out).
        num_soft_tokens: k, the soft tokens one context becomes (also the MLP branch's groups).
        width: the adapter's inner width.
        heads: attention heads of every attention block.
        mlp_ratio: hidden width of the MLP blocks, as a multiple of ``width``.
        gate_noise: scale of the noisy gate's learned noise while training (0: plain softmax).
        embedding_norm: mean L2 norm of the served model's input embedding rows; each soft
            token is scaled to it, so the reader sees inputs of the size it was trained on.
        model: identity of the served model (name, sizes, embedding fingerprint), checked on load.
    """

    hidden_size: int
    num_soft_tokens: int = 8
    width: int = 256
    heads: int = 4
    mlp_ratio: int = 2
    gate_noise: float = 1.0
    embedding_norm: float = 1.0
    model: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_soft_tokens", "width", "heads", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if not isinstance(self.gate_noise, (int, float)) or self.gate_noise < 0:
            raise ValueError(f"gate_noise must be >= 0, got {self.gate_noise!r}")
        if not isinstance(self.embedding_norm, (int, float)) or not self.embedding_norm > 0:
            raise ValueError(f"embedding_norm must be > 0, got {self.embedding_norm!r}")
