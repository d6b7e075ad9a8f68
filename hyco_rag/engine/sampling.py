"""Per-request decoding settings, validated once where the request enters the engine."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    Attributes:
        max_tokens: most tokens generated for this row; it leaves the batch when reached.
        temperature: 0 is greedy (deterministic, what benchmarks use); above 0 samples.
        top_p: nucleus sampling mass (only when sampling).
        stop: texts at which the answer ends (not included); the row stops generating there.
        seed: seeds this row's sampler, so a sampled answer can be reproduced.
    """

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        stop = self.stop
        if isinstance(stop, str):
            raise ValueError("stop must be a list of strings, not one string")
        if stop is None:
            stop = ()
        if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
            raise ValueError(f"stop must be a list of strings, got {stop!r}")
        object.__setattr__(self, "stop", tuple(s for s in stop if s))
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
