"""`hyco-rag serve`: the OpenAI-compatible server (FastAPI + uvicorn) over the serving engine.

::

    hyco-rag serve --host 127.0.0.1 --port 8000 --mode combine
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{
        "model": "default", "messages": [{"role": "user", "content": "Who built the tower?"}],
        "documents": ["The Eiffel Tower was built by Gustave Eiffel's company."],
        "hyco": {"mode": "combine"}}'

Routes: ``POST /v1/chat/completions`` (streaming or not), ``POST /v1/compress``,
``GET /v1/models``, ``GET /health``, ``GET /metrics``; see ``docs/server.md``.  Loopback by
default; ``--api-key`` or the ``HYCO_RAG_API_KEY`` environment variable makes every route but
``/health`` require ``Authorization: Bearer <key>``.  Needs the ``server`` extra
(``pip install 'hyco-rag[server]'``).

``--ray`` serves the same app through Ray Serve, with ``--replicas`` generator (engine)
replicas and a compressor deployment, on a local Ray instance bounded to ``--num-cpus`` or on
the cluster at ``--ray-address`` (the ``ray`` extra; ``docs/scaling.md``).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Any

from hyco_rag.engine.modes import MODE_NAMES

if TYPE_CHECKING:
    from hyco_rag.engine import Engine

logger = logging.getLogger(__name__)

#: The environment variable read when ``--api-key`` is not given (keeps the key out of ``ps``).
API_KEY_ENV = "HYCO_RAG_API_KEY"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_threads() -> int:
    """1 torch thread on 2 cores or fewer (more threads were 3-6x slower on a busy 2-core
    machine), else up to 4."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return 1 if usable <= 2 else min(usable, 4)


def api_key_from(args: argparse.Namespace) -> str | None:
    """``--api-key``, else ``$HYCO_RAG_API_KEY``, else ``None`` (no authentication)."""
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    return key or None


def build_app(args: argparse.Namespace, engine: Engine | None = None) -> tuple[Any, Engine]:
    """The app and its engine for parsed ``serve`` arguments (``engine`` skips the loading)."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ValueError(
            f"the server needs the 'server' extra ({error.name} is missing): pip install 'hyco-rag[server]'"
        ) from None
    from hyco_rag.engine import Engine, EngineConfig
    from hyco_rag.server import create_app

    if engine is None:
        config = EngineConfig(
            max_batch_size=args.max_batch_size,
            max_queue=args.max_queue,
            timeout_s=args.timeout if args.timeout > 0 else None,
            delta_cache_size=args.delta_cache_size,
        )
        engine = Engine.from_pretrained(args.model, args.translator, device=args.device, config=config)
    api_key = api_key_from(args)
    if args.host not in LOOPBACK and api_key is None:
        logger.warning(
            "serving on %s without an API key: anyone who can reach this port can use it (set %s)", args.host, API_KEY_ENV
        )
    app = create_app(
        engine,
        default_mode=args.mode,
        api_key=api_key,
        max_body_bytes=args.max_body_bytes,
        max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens,
    )
    return app, engine


def ray_config(args: argparse.Namespace) -> Any:
    """The :class:`~hyco_rag.distributed.RayServeConfig` of parsed ``serve --ray`` arguments."""
    from hyco_rag.distributed.config import (
        CompressorSpec,
        DeploymentOptions,
        EngineSpec,
        RayServeConfig,
        ServerOptions,
    )

    if args.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        raise ValueError(f"--max-replicas ({args.max_replicas}) must be >= --replicas ({args.replicas})")
    if args.compressor_replicas < 0:
        raise ValueError(f"--compressor-replicas must be >= 0, got {args.compressor_replicas}")
    autoscaling = None
    if args.max_replicas is not None:
        # Ray Serve scales on ongoing requests per replica: a full batch is the target, so the
        # engine's own queue absorbs bursts while new replicas start.
        autoscaling = {
            "min_replicas": args.replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.max_batch_size,
        }
    return RayServeConfig(
        engine=EngineSpec(
            model=args.model,
            translator=args.translator,
            device=args.device,
            max_batch_size=args.max_batch_size,
            max_queue=args.max_queue,
            timeout_s=args.timeout if args.timeout > 0 else None,
            delta_cache_size=args.delta_cache_size,
            threads=args.threads,
        ),
        compressor=CompressorSpec(target_tokenizer=args.model, threads=args.threads) if args.compressor_replicas else None,
        generator_deployment=DeploymentOptions(
            num_replicas=args.replicas,
            autoscaling_config=autoscaling,
            num_cpus=args.replica_cpus,
            num_gpus=args.replica_gpus,
            max_ongoing_requests=args.max_batch_size + args.max_queue,
        ),
        compressor_deployment=DeploymentOptions(num_replicas=max(args.compressor_replicas, 1), num_cpus=args.compressor_cpus),
        server=ServerOptions(
            default_mode=args.mode,
            api_key=api_key_from(args),
            max_body_bytes=args.max_body_bytes,
            max_tokens_limit=args.max_tokens_limit,
            default_max_tokens=args.default_max_tokens,
        ),
    )


def run_ray(args: argparse.Namespace) -> int:
    """``serve --ray``: deploy on Ray Serve and serve until Ctrl-C."""
    from hyco_rag.distributed.serve import require_ray, run_local

    config = ray_config(args)  # bad options fail before Ray starts
    if args.num_cpus is not None and args.num_cpus <= 0:
        raise ValueError(f"--num-cpus must be > 0, got {args.num_cpus}")
    require_ray()
    if args.host not in LOOPBACK and config.server.api_key is None:
        logger.warning(
            "serving on %s without an API key: anyone who can reach this port can use it (set %s)", args.host, API_KEY_ENV
        )
    where = args.ray_address or f"a local Ray instance ({args.num_cpus or 'all'} CPUs, loopback)"
    host = f"[{args.host}]" if ":" in args.host else args.host
    logger.warning(
        "hyco-rag serve --ray: %d generator replica(s) on %s at http://%s:%d/v1; Ctrl-C stops",
        args.replicas,
        where,
        host,
        args.port,
    )
    run_local(
        config, host=args.host, port=args.port, address=args.ray_address, num_cpus=args.num_cpus, num_gpus=None, blocking=True
    )
    return 0


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.ray:
        return run_ray(args)
    import torch

    torch.set_num_threads(args.threads)
    app, engine = build_app(args)
    import uvicorn

    auth = "API key required" if api_key_from(args) else "no API key"
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"hyco-rag serve: {engine.name} at http://{host}:{args.port}/v1 (default mode {args.mode}, {auth}); Ctrl-C stops",
        flush=True,
    )
    try:
        uvicorn.run(
            app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log, timeout_graceful_shutdown=5
        )
    finally:
        engine.close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (chat completions with documents, compress, metrics)",
        description=(
            "OpenAI-compatible server: POST /v1/chat/completions (documents and hyco {mode, rate|target_tokens} "
            "through extra_body), POST /v1/compress, GET /v1/models, /health, /metrics."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=None, help="served model; None = the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--translator", default=None, help="DyPRAG translator folder; None = the shipped one")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    parser.add_argument("--mode", default="combine", choices=MODE_NAMES, help="mode of requests with documents and no hyco.mode")
    parser.add_argument(
        "--api-key", default=None, help=f"require 'Authorization: Bearer <key>' (default: ${API_KEY_ENV}, else none)"
    )
    parser.add_argument("--max-batch-size", type=int, default=16, help="rows decoded together")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before new ones get a 429")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="per-request timeout in seconds (0: none); a timed-out request gets a 503"
    )
    parser.add_argument("--delta-cache-size", type=int, default=1024, help="passages whose DyPRAG delta is cached")
    parser.add_argument("--max-tokens-limit", type=int, default=2048, help="largest max_tokens a request may ask for")
    parser.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens of a request that names none")
    parser.add_argument("--max-body-bytes", type=int, default=4 << 20, help="larger request bodies get a 413")
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch CPU threads")
    parser.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"), help="uvicorn's log level"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request line")
    ray = parser.add_argument_group("Ray Serve (pip install 'hyco-rag[ray]'; docs/scaling.md)")
    ray.add_argument("--ray", action="store_true", help="serve through Ray Serve: ingress, generator and compressor deployments")
    ray.add_argument("--replicas", type=int, default=1, help="generator (engine) replicas; the minimum with --max-replicas")
    ray.add_argument("--max-replicas", type=int, default=None, help="autoscale generator replicas up to this many")
    ray.add_argument("--ray-address", default=None, help="attach to this Ray cluster ('auto', 'ray://head:10001')")
    ray.add_argument("--num-cpus", type=float, default=None, help="CPUs of the local Ray instance (default: all)")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per generator replica")
    ray.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs reserved per generator replica")
    ray.add_argument(
        "--compressor-replicas", type=int, default=1, help="compressor replicas (0: each generator uses its own compressor)"
    )
    ray.add_argument("--compressor-cpus", type=float, default=0.5, help="CPUs reserved per compressor replica")
    parser.set_defaults(handler=run)
