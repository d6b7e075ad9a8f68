"""Ray Serve deployments: the OpenAI-compatible app, scaled out (``hyco-rag serve --ray``).

The shape of Ray Serve LLM, with plain Ray Serve (which can carry our generated deltas):

* ``OpenAIIngress`` (:func:`ingress_class`) - the *same* FastAPI app as ``hyco-rag serve`` (:func:`hyco_rag.server.create_app`,
  same routes, errors and ``/metrics``) through ``serve.ingress``, over a
  :class:`~hyco_rag.distributed.client.RayEngineClient` instead of an in-process engine;
* ``GeneratorServer`` - one :class:`~hyco_rag.engine.Engine` per replica (model, translator,
  delta cache, continuous batching); a request is prepared and decoded on one replica;
* ``CompressorServer`` - the HyCo compressor, shared by every generator replica (the
  compressing modes call it) and by ``POST /v1/compress``.

Each deployment has its own replica count or autoscaling bounds and resources
(:class:`~hyco_rag.distributed.config.DeploymentOptions`).  :func:`build_app` is the
application builder ``serve run`` / KubeRay import (``examples/ray/serve.yaml``); :func:`run_local`
starts it on a local or an existing Ray cluster.  See ``docs/scaling.md``.

The delta cache stays per replica, on purpose (see ``docs/scaling.md``, "What is shared").
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from hyco_rag.distributed.config import CompressorSpec, EngineSpec, RayServeConfig

logger = logging.getLogger(__name__)

__all__ = ["CompressorServer", "GeneratorServer", "build_app", "ingress_class", "require_ray", "run_local"]

#: Most buffered per-request events a replica keeps between two answers.
_MAX_BUFFERED_REQUESTS = 10_000


def require_ray() -> None:
    """Raise a ``ValueError`` naming the extra to install when Ray Serve is missing."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as error:
        raise ValueError(f"--ray needs Ray Serve and Ray Data ({error.name} is missing): pip install 'hyco-rag[ray]'") from None


def _call_factory(path: str, kwargs: dict[str, Any]) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def build_engine(spec: EngineSpec) -> Any:
    """The engine a generator replica serves."""
    import torch

    from hyco_rag.engine import Engine, EngineConfig

    torch.set_num_threads(spec.threads)
    if spec.factory is not None:
        return _call_factory(spec.factory, spec.factory_kwargs)
    config = EngineConfig(
        max_batch_size=spec.max_batch_size,
        max_queue=spec.max_queue,
        timeout_s=spec.timeout_s,
        delta_cache_size=spec.delta_cache_size,
    )
    return Engine.from_pretrained(spec.model, spec.translator, device=spec.device, config=config)


def build_compressor(spec: CompressorSpec) -> Any:
    """The compressor a compressor replica serves."""
    import torch

    torch.set_num_threads(spec.threads)
    if spec.factory is not None:
        return _call_factory(spec.factory, spec.factory_kwargs)
    from hyco_rag.compression import HyCoCompressor

    return HyCoCompressor.from_pretrained(spec.model, device=spec.device)


def compressed_output(result: Any, count: int) -> dict[str, Any]:
    """``.texts`` (one per document, input order, ``""`` where dropped) and JSON-safe stats."""
    passages = getattr(result, "passages", None)
    if passages is not None:
        texts = [""] * count
        for passage in passages:
            texts[passage.index] = "" if passage.dropped else passage.text
    else:
        texts = list(result.texts)
    stats = getattr(result, "stats", None)
    return {"texts": texts, "stats": json.loads(json.dumps(stats if isinstance(stats, dict) else {}, default=str))}


class _EventBuffer:
    """An engine listener that keeps events until the next answer carries them away."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[tuple[str, float, float | None, int, int]] = []
        self._steps: Counter[int] = Counter()
        self._hits = self._misses = 0

    def on_request(
        self, status: str, latency_s: float, first_token_s: float | None, prompt_tokens: int, completion_tokens: int
    ) -> None:
        with self._lock:
            if len(self._requests) < _MAX_BUFFERED_REQUESTS:
                self._requests.append((status, latency_s, first_token_s, prompt_tokens, completion_tokens))

    def on_step(self, batch_size: int, queue_depth: int) -> None:
        with self._lock:
            self._steps[batch_size] += 1

    def on_delta_cache(self, hits: int, misses: int) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses

    def drain(self) -> dict[str, Any]:
        with self._lock:
            out = {
                "requests": self._requests,
                "steps": {str(k): v for k, v in self._steps.items()},
                "delta_cache": (self._hits, self._misses),
            }
            self._requests, self._steps, self._hits, self._misses = [], Counter(), 0, 0
        return out


class GeneratorServer:
    """One engine per replica: prepares (compression, deltas, prompt) and decodes requests.

    Args:
        config: :meth:`RayServeConfig.to_dict` (plain data, as Serve ships it).
        compressor: handle of the compressor deployment, or ``None`` (the engine's own).
    """

    def __init__(self, config: dict[str, Any], compressor: Any | None = None) -> None:
        from hyco_rag.distributed.client import RemoteCompressor

        settings = RayServeConfig.from_dict(config)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.engine = build_engine(settings.engine)
        self.replica = uuid.uuid4().hex[:12]
        self.events = _EventBuffer()
        self.engine.add_listener(self.events)
        # Compressing chat modes count their budget in the served model's tokens, as in one process.
        self.compressor = (
            RemoteCompressor(compressor, in_target_tokens=True, wait_s=settings.wait_s) if compressor is not None else None
        )
        logger.info("generator replica %s serves %s", self.replica, self.engine.name)

    def report(self) -> dict[str, Any]:
        """This replica's gauges and the engine events since the last report."""
        return {
            "replica": self.replica,
            "pid": os.getpid(),
            "queue_depth": self.engine.queue_depth,
            "running": self.engine.running,
            "delta_cache_entries": self.engine.delta_cache_entries,
            "events": self.events.drain(),
        }

    def info(self) -> dict[str, Any]:
        config = self.engine.config
        return {
            "name": self.engine.name,
            "deltas": self.engine.translator is not None,
            "max_batch_size": config.max_batch_size,
            "max_queue": config.max_queue,
            "timeout_s": config.timeout_s,
            "report": self.report(),
        }

    async def _prepare(self, payload: dict[str, Any]) -> Any:
        return await self.engine.aprepare(
            payload["messages"],
            payload["documents"],
            mode=payload["mode"],
            compressor=self.compressor,
            rate=payload["rate"],
            target_tokens=payload["target_tokens"],
        )

    @staticmethod
    def _sampling(payload: dict[str, Any]) -> Any:
        from hyco_rag.engine.sampling import SamplingParams

        data = dict(payload["sampling"])
        data["stop"] = tuple(data.get("stop") or ())
        return SamplingParams(**data)

    def _done(self, prepared: Any, completion: Any) -> dict[str, Any]:
        return {
            "event": "done",
            "completion": {
                "text": completion.text,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "finish_reason": completion.finish_reason,
                "timings": dict(completion.timings),
            },
            "stats": prepared.stats(completion),
            "report": self.report(),
        }

    async def generate(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Prepare and decode one request to the end (cancelling the call cancels it)."""
        prepared = await self._prepare(payload)
        completion = await self.engine.agenerate(prepared, self._sampling(payload), timeout_s=payload["timeout_s"])
        return self._done(prepared, completion)

    async def stream(self, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """``prepared`` (the request's costs), ``text`` pieces, then ``done``."""
        prepared = await self._prepare(payload)
        # Submitted before the first event, so a refusal (window, overload) is raised before it.
        handle = self.engine.submit(
            prepared, self._sampling(payload), timeout_s=payload["timeout_s"], loop=asyncio.get_running_loop()
        )
        try:
            yield {"event": "prepared", "stats": prepared.stats()}
            async for item in handle:
                if isinstance(item, str):
                    yield {"event": "text", "text": item}
                else:
                    yield self._done(prepared, item)
        finally:
            handle.cancel()  # no-op once finished; frees the slot when the ingress went away

    async def compress(
        self, query: str, documents: list[str], budget: dict[str, Any], in_target_tokens: bool = False
    ) -> dict[str, Any]:
        """``/v1/compress`` without a compressor deployment: the engine's own compressor."""
        compressor = await asyncio.to_thread(lambda: self.engine.compressor)
        return await _compress(compressor, query, documents, budget, None)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


async def _compress(compressor: Any, query: str, documents: list[str], budget: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    options = dict(budget)
    if tokenizer is not None and "target_tokenizer" not in options:
        options["target_tokenizer"] = tokenizer
    acompress = getattr(compressor, "acompress", None)
    if acompress is not None:  # HyCo batches concurrent calls together
        result = await acompress(query, documents, **options)
    else:
        result = await asyncio.to_thread(compressor.compress, query, documents, **options)
    return compressed_output(result, len(documents))


class CompressorServer:
    """The HyCo compressor, shared by every generator replica and ``POST /v1/compress``."""

    def __init__(self, config: dict[str, Any]) -> None:
        settings = RayServeConfig.from_dict(config)
        spec = settings.compressor or CompressorSpec()
        self.compressor = build_compressor(spec)
        self._target_name = spec.target_tokenizer or settings.engine.model
        self._target: Any = None
        self._lock = threading.Lock()

    def _target_tokenizer(self) -> Any:
        from hyco_rag.compression import HyCoCompressor

        if not isinstance(self.compressor, HyCoCompressor):
            return None  # a custom compressor gets the budget only, as Engine.prepare gives it
        with self._lock:
            if self._target is None:
                from hyco_rag.models import load_tokenizer

                self._target = load_tokenizer(self._target_name)
            return self._target

    async def compress(
        self, query: str, documents: list[str], budget: dict[str, Any], in_target_tokens: bool = False
    ) -> dict[str, Any]:
        """Compress ``documents`` for ``query``; ``in_target_tokens``: count the budget in the
        served model's tokens (what ``Engine.prepare`` does), else in the compressor's own
        (what ``/v1/compress`` does in one process)."""
        tokenizer = await asyncio.to_thread(self._target_tokenizer) if in_target_tokens else None
        return await _compress(self.compressor, query, documents, budget, tokenizer)


_INGRESS: type | None = None


def ingress_class() -> type:
    """The ingress deployment class (``OpenAIIngress``), defined on first use because
    ``serve.ingress`` needs Ray: this module imports without it."""
    global _INGRESS
    if _INGRESS is not None:
        return _INGRESS
    from ray import serve

    @serve.ingress()
    class OpenAIIngress:
        """The FastAPI app of ``hyco-rag serve`` over the generator and compressor deployments."""

        async def __init__(self, config: dict[str, Any], generator: Any, compressor: Any | None = None) -> None:  # type: ignore[misc]  # Ray Serve awaits an async constructor
            from hyco_rag.distributed.client import RayEngineClient

            self.settings = RayServeConfig.from_dict(config)
            self.client = await RayEngineClient.connect(
                generator, compressor, retries=self.settings.retries, wait_s=self.settings.wait_s
            )

        def __serve_build_asgi_app__(self) -> Any:
            from hyco_rag.server import create_app

            options = self.settings.server
            return create_app(
                self.client,  # type: ignore[arg-type]
                default_mode=options.default_mode,
                api_key=options.api_key or os.environ.get("HYCO_RAG_API_KEY") or None,
                max_body_bytes=options.max_body_bytes,
                max_tokens_limit=options.max_tokens_limit,
                default_max_tokens=options.default_max_tokens,
            )

    _INGRESS = OpenAIIngress
    return OpenAIIngress


def build_app(args: dict[str, Any] | None = None) -> Any:
    """The Ray Serve application (``serve run hyco_rag.distributed.serve:build_app`` or
    ``serve.yaml``'s ``import_path``); ``args`` are :meth:`RayServeConfig.from_dict`'s."""
    require_ray()
    from ray import serve

    settings = RayServeConfig.from_dict(args)
    config = settings.to_dict()
    compressor = None
    if settings.compressor is not None:
        compressor = (
            serve.deployment(CompressorServer, name="Compressor")
            .options(**settings.compressor_deployment.to_options())
            .bind(config)
        )
    generator = (
        serve.deployment(GeneratorServer, name="Generator")
        .options(**settings.generator_deployment.to_options())
        .bind(config, compressor)
    )
    ingress = serve.deployment(ingress_class(), name="OpenAIIngress")
    return ingress.options(**settings.ingress_deployment.to_options()).bind(config, generator, compressor)


def run_local(
    config: RayServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    blocking: bool = False,
) -> Any:
    """Start (or attach to) Ray, start Serve's HTTP proxy on ``host:port`` and deploy.

    Without ``address`` a local Ray instance starts on loopback, with at most ``num_cpus``
    CPUs (default: this machine's); ``address`` (``"auto"``, ``"ray://head:10001"``) attaches
    to a running cluster instead.  Returns the ingress handle (``blocking``: serves until
    Ctrl-C, then shuts Serve down).
    """
    require_ray()
    import ray
    from ray import serve

    if not ray.is_initialized():
        env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        if address is None:
            ray.init(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                runtime_env={"env_vars": env},
                configure_logging=False,
            )
        else:
            ray.init(address=address, runtime_env={"env_vars": env})
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(build_app(config.to_dict()), name=config.app_name, route_prefix=config.route_prefix, blocking=False)
    if blocking:
        import time

        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            logger.info("stopping")
        finally:
            serve.shutdown()
            ray.shutdown()
    return handle
