"""What the engine reports while it runs: listeners get every event, :class:`EngineStats`
keeps the totals (the server adds a Prometheus listener; benchmarks read the totals)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol


class EngineListener(Protocol):
    """Receives the engine's events (called from the worker thread; keep them cheap)."""

    def on_request(
        self, status: str, latency_s: float, first_token_s: float | None, prompt_tokens: int, completion_tokens: int
    ) -> None: ...

    def on_step(self, batch_size: int, queue_depth: int) -> None: ...

    def on_delta_cache(self, hits: int, misses: int) -> None: ...


@dataclass
class EngineStats:
    """Running totals of one engine (thread-safe snapshots through :meth:`snapshot`)."""

    requests: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    step_rows: int = 0
    max_batch: int = 0
    queue_depth: int = 0
    running: int = 0
    delta_cache_hits: int = 0
    delta_cache_misses: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def on_request(
        self, status: str, latency_s: float, first_token_s: float | None, prompt_tokens: int, completion_tokens: int
    ) -> None:
        with self._lock:
            self.requests[status] = self.requests.get(status, 0) + 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens

    def on_step(self, batch_size: int, queue_depth: int) -> None:
        with self._lock:
            self.steps += 1
            self.step_rows += batch_size
            self.max_batch = max(self.max_batch, batch_size)
            self.running, self.queue_depth = batch_size, queue_depth

    def on_delta_cache(self, hits: int, misses: int) -> None:
        with self._lock:
            self.delta_cache_hits += hits
            self.delta_cache_misses += misses

    @property
    def mean_batch_size(self) -> float:
        """Rows per decode step, averaged over steps (1.0 means no batching happened)."""
        return self.step_rows / self.steps if self.steps else 0.0

    @property
    def delta_cache_hit_rate(self) -> float:
        total = self.delta_cache_hits + self.delta_cache_misses
        return self.delta_cache_hits / total if total else 0.0

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "steps": self.steps,
                "mean_batch_size": self.step_rows / self.steps if self.steps else 0.0,
                "max_batch": self.max_batch,
                "queue_depth": self.queue_depth,
                "running": self.running,
                "delta_cache_hits": self.delta_cache_hits,
                "delta_cache_misses": self.delta_cache_misses,
            }
