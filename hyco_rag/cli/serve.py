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


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
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
    parser.set_defaults(handler=run)
