"""`hyco-rag serve`: a minimal JSON HTTP endpoint over the DyPRAG served model.

Standard library only (``http.server``), bound to 127.0.0.1 by default::

    POST /generate  {"question": str, "documents": [str, ...], "mode": "combine",
                     "max_new_tokens": 32}
        -> 200 {"answer", "mode", "prompt_tokens", "completion_tokens", "context_tokens",
                "passage_tokens", "passages_injected", "delta_rank", "timings"}
        -> 400 {"error": "..."} for bad input
    GET  /health    -> {"status": "ok", "modes": [...], "default_mode": ...}

Requests are handled in threads; generation serialises on the model lock, so concurrent
requests get exactly their sequential answers.  It is a local development server, not a
hardened public service (no auth, no TLS).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyco_rag.dyprag import ParametricRAG

logger = logging.getLogger(__name__)

#: Largest request body accepted (bytes).
MAX_BODY = 1 << 20
#: Upper bound on max_new_tokens a request may ask for.
MAX_NEW_TOKENS = 512


def parse_request(payload: Any) -> dict[str, Any]:
    """Validate a /generate body; returns keyword arguments for the runtime.

    Raises:
        ValueError: naming the offending field.
    """
    if not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object")
    unknown = set(payload) - {"question", "documents", "mode", "max_new_tokens"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    question = payload.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty string")
    documents = payload.get("documents", [])
    if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
        raise ValueError("'documents' must be a list of strings")
    mode = payload.get("mode")
    if mode is not None and not isinstance(mode, str):
        raise ValueError("'mode' must be a string")
    max_new_tokens = payload.get("max_new_tokens")
    if max_new_tokens is not None and (
        isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS
    ):
        raise ValueError(f"'max_new_tokens' must be an integer in 1..{MAX_NEW_TOKENS}")
    return {"question": question, "documents": documents, "mode": mode, "max_new_tokens": max_new_tokens}


def make_handler(rag: ParametricRAG) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``rag``."""
    from hyco_rag.dyprag import MODES

    class Handler(BaseHTTPRequestHandler):
        server_version = "hyco-rag"

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # route to logging, not stderr
            logger.info("%s - %s", self.address_string(), format % args)

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path == "/health":
                self._send(HTTPStatus.OK, {"status": "ok", "modes": list(MODES), "default_mode": rag.mode})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path!r}; use POST /generate or GET /health"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/generate":
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path!r}; use POST /generate"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                self._send(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"})
                return
            if length <= 0 or length > MAX_BODY:
                status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > MAX_BODY else HTTPStatus.BAD_REQUEST
                self._send(status, {"error": f"the body must be 1..{MAX_BODY} bytes of JSON"})
                return
            try:
                request = parse_request(json.loads(self.rfile.read(length)))
                config = rag.generator.config
                if request["max_new_tokens"] is not None:
                    config = replace(config, max_new_tokens=request["max_new_tokens"])
                answer = rag.answer(request["question"], request["documents"], mode=request["mode"], config=config)
            except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(error)})
                return
            except Exception as error:  # noqa: BLE001 - report, keep serving
                logger.exception("generation failed")
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"})
                return
            result = asdict(answer)
            result["answer"] = result.pop("text")
            self._send(HTTPStatus.OK, result)

    return Handler


def build_server(rag: ParametricRAG, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for ``rag`` (``port=0`` picks a free port; see ``server.server_address``)."""
    server = ThreadingHTTPServer((host, port), make_handler(rag))
    server.daemon_threads = True
    return server


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from hyco_rag.dyprag import ParametricRAG
    from hyco_rag.generation import GenerationConfig

    torch.set_num_threads(args.threads)
    rag = ParametricRAG.from_pretrained(
        args.model,
        args.translator,
        device=args.device,
        config=GenerationConfig(max_new_tokens=args.max_new_tokens, stop_at_newline=True),
        mode=args.mode,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: this development server has no authentication", args.host)
    server = build_server(rag, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"hyco-rag serve: POST http://{host}:{port}/generate (mode {args.mode}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


#: The runtime's modes (hyco_rag.dyprag.MODES), spelled out so `hyco-rag --help` needs no torch.
MODES = ("none", "rag", "dyprag", "combine")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model with DyPRAG deltas over a local JSON HTTP endpoint",
        description="POST /generate {question, documents, mode} -> answer; GET /health.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=None, help="served model; None = the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--translator", default=None, help="translator folder; None = the shipped one")
    parser.add_argument("--mode", default="combine", choices=MODES, help="default mode of requests")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.set_defaults(handler=run)
