"""Prometheus metrics of one server: a registry per app, fed by an engine listener.

The engine reports from its worker thread (``on_request`` / ``on_step`` / ``on_delta_cache``,
see :class:`hyco_rag.engine.EngineListener`); the HTTP layer counts responses by route and
status.  Gauges that describe the engine's state right now (queue depth, running rows, mean
batch size, delta-cache hit rate) are read from the engine when ``/metrics`` is scraped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from hyco_rag.server.backend import ServingBackend

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class ServerMetrics:
    """The server's metrics in their own registry (two apps in one process never collide).

    Also an engine listener: pass it to :meth:`Engine.add_listener`.
    """

    def __init__(self, engine: ServingBackend, namespace: str = "hyco_rag") -> None:
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        self.http_requests = Counter(
            "http_requests",
            "HTTP responses by route, method and status code",
            ["route", "method", "status"],
            namespace=ns,
            registry=r,
        )
        self.requests = Counter(
            "requests",
            "Generation requests ended in the engine, by status (ok, cancelled, timeout, error)",
            ["status"],
            namespace=ns,
            registry=r,
        )
        self.rejected = Counter(
            "rejected_requests",
            "Generation requests refused before the engine ran them, by reason",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.prompt_tokens = Counter("prompt_tokens", "Prompt tokens of finished requests", namespace=ns, registry=r)
        self.completion_tokens = Counter("completion_tokens", "Completion tokens generated", namespace=ns, registry=r)
        self.latency = Histogram(
            "request_latency_seconds",
            "Submission to last token, per finished request",
            namespace=ns,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.ttft = Histogram(
            "time_to_first_token_seconds",
            "Submission to first token, per request",
            namespace=ns,
            registry=r,
            buckets=_TTFT_BUCKETS,
        )
        self.batch_size = Histogram(
            "batch_size", "Rows in the running batch after each decode step", namespace=ns, registry=r, buckets=_BATCH_BUCKETS
        )
        self.steps = Counter("decode_steps", "Decode steps run", namespace=ns, registry=r)
        self.delta_hits = Counter("delta_cache_hits", "Passages whose delta came from the cache", namespace=ns, registry=r)
        self.delta_misses = Counter("delta_cache_misses", "Passages encoded and translated", namespace=ns, registry=r)
        self.compress_requests = Counter("compress_requests", "POST /v1/compress requests answered", namespace=ns, registry=r)
        self.compress_tokens = Counter("compress_tokens", "Tokens through /v1/compress", ["kind"], namespace=ns, registry=r)
        self.backend_retries = Counter(
            "backend_retries",
            "Requests sent again to another replica after theirs died (Ray Serve; always 0 in one process)",
            namespace=ns,
            registry=r,
        )
        Gauge("queue_depth", "Requests waiting for a batch slot", namespace=ns, registry=r).set_function(
            lambda: engine.queue_depth
        )
        Gauge("running", "Rows in the running batch", namespace=ns, registry=r).set_function(lambda: engine.running)
        Gauge("max_batch_size", "Configured most rows decoded together", namespace=ns, registry=r).set(
            engine.config.max_batch_size
        )
        Gauge("max_queue", "Configured most waiting requests", namespace=ns, registry=r).set(engine.config.max_queue)
        Gauge("mean_batch_size", "Rows per decode step since the engine started", namespace=ns, registry=r).set_function(
            lambda: engine.stats.mean_batch_size
        )
        Gauge(
            "delta_cache_hit_rate", "Share of passage lookups answered by the delta cache", namespace=ns, registry=r
        ).set_function(lambda: engine.stats.delta_cache_hit_rate)
        Gauge("delta_cache_entries", "Passage deltas held in the cache", namespace=ns, registry=r).set_function(
            lambda: engine.delta_cache_entries
        )

    # ------------------------------------------------------------------ engine listener

    def on_request(
        self, status: str, latency_s: float, first_token_s: float | None, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self.requests.labels(status).inc()
        if status == "ok":
            self.latency.observe(latency_s)
            self.prompt_tokens.inc(prompt_tokens)
        if first_token_s is not None:
            self.ttft.observe(first_token_s)
        if completion_tokens:
            self.completion_tokens.inc(completion_tokens)

    def on_step(self, batch_size: int, queue_depth: int) -> None:
        self.steps.inc()
        if batch_size:
            self.batch_size.observe(batch_size)

    def on_delta_cache(self, hits: int, misses: int) -> None:
        if hits:
            self.delta_hits.inc(hits)
        if misses:
            self.delta_misses.inc(misses)

    def on_backend_retry(self) -> None:
        """A remote backend resent a request whose replica died (not an engine event)."""
        self.backend_retries.inc()

    # ------------------------------------------------------------------ exposition

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
