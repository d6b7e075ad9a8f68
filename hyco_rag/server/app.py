"""The OpenAI-compatible HTTP server over one :class:`~hyco_rag.engine.Engine`.

Routes (see ``docs/server.md``)::

    POST /v1/chat/completions   OpenAI chat completions (JSON or SSE stream) + documents/hyco
    POST /v1/compress           the HyCo compressor alone (the `hyco-rag compress` contract)
    GET  /v1/models             the served model (its own id and "default")
    GET  /v1/models/{id}
    GET  /health                liveness and the engine's state (no API key needed)
    GET  /metrics               Prometheus text

The app is written against :class:`~hyco_rag.server.backend.ServingBackend` (the part of the
engine it uses), so the same app serves an in-process :class:`~hyco_rag.engine.Engine` and,
through ``serve.ingress``, Ray Serve deployments (:mod:`hyco_rag.distributed`).

The handlers are thin: parse and bound the body, turn it into chat dicts and passage strings,
``await engine.aprepare(...)`` (compression and delta encoding block, so they run off the
event loop), submit to the engine's worker and await or stream its pieces.  A client that
disconnects cancels its request (streaming or not); the worker frees the row's batch slot at
the next decode step, and hooks never outlive a forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hyco_rag.engine.errors import (
    EngineClosedError,
    EngineError,
    EngineOverloadedError,
    RequestCancelledError,
    RequestTimeoutError,
)
from hyco_rag.engine.modes import MODE_NAMES, Mode
from hyco_rag.server.backend import BackendUnavailableError, ServingBackend
from hyco_rag.server.errors import APIError, error_body, validation_message
from hyco_rag.server.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from hyco_rag.server.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    CompressRequest,
    DocumentObject,
    ModelCard,
    ModelList,
)

if TYPE_CHECKING:
    from hyco_rag.engine import Completion, SamplingParams
    from hyco_rag.server.backend import ServedRequest, ServingHandle

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

#: The alias every served model also answers to.
DEFAULT_MODEL_ALIAS = "default"
#: Largest body accepted by default (bytes).
DEFAULT_MAX_BODY_BYTES = 4 << 20
#: Highest ``max_tokens`` a request may ask for by default.
DEFAULT_MAX_TOKENS_LIMIT = 2048
#: ``max_tokens`` of a request that names none.
DEFAULT_MAX_TOKENS = 256
#: Most stop sequences per request.
MAX_STOP_SEQUENCES = 16
#: Status reported (in metrics and logs) for a request whose client went away first.
CLIENT_CLOSED = 499


class _ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


class _DisconnectAwareStreamingResponse(StreamingResponse):
    """A streaming response that always closes its body iterator, so a stream whose client went
    away (Starlette cancels the send loop) runs its ``finally`` and cancels its engine request
    at once instead of whenever the async generator is garbage-collected."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


class _HTTPMetricsMiddleware:
    """Counts every response by route template, method and status (pure ASGI: it does not
    wrap or buffer streaming responses)."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            code = status[0] if status else CLIENT_CLOSED
            self.metrics.http_requests.labels(path, scope.get("method", ""), str(code)).inc()


def create_app(
    engine: ServingBackend,
    *,
    default_mode: Mode | str = Mode.COMBINE,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
    compressor: Any | None = None,
    request_timeout_s: float | None = -1.0,
) -> FastAPI:
    """The FastAPI app serving ``engine``.

    Args:
        engine: the serving engine (the app does not close it; whoever built it does): an
            :class:`~hyco_rag.engine.Engine`, or anything with its
            :class:`~hyco_rag.server.backend.ServingBackend` surface (the Ray Serve client).
        default_mode: mode of requests with documents and no ``hyco.mode``.
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <key>``
            (compared in constant time).
        max_body_bytes: larger bodies get a 413 before they are parsed.
        max_tokens_limit: requests asking for more ``max_tokens`` get a 400.
        default_max_tokens: ``max_tokens`` of a request that names none (capped by the limit).
        compressor: what ``/v1/compress`` and the compressing modes (``hyco``, ``combine-hyco``,
            ``hybrid``, ``combine-hybrid``) compress with (default: the engine's HyCo
            compressor, loaded on first use).  Any object
            with ``compress(query, documents, rate=|target_tokens=)`` returning ``.texts``.
        request_timeout_s: per-request timeout of generation (``-1``: the engine's
            ``config.timeout_s``; ``None``: none); a timed-out request gets a 503.
    """
    mode = Mode.parse(default_mode)
    for name, value in (
        ("max_body_bytes", max_body_bytes),
        ("max_tokens_limit", max_tokens_limit),
        ("default_max_tokens", default_max_tokens),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if api_key is not None and not api_key:
        raise ValueError("api_key must be a non-empty string or None")
    if (
        request_timeout_s is not None
        and request_timeout_s != -1.0
        and not (isinstance(request_timeout_s, (int, float)) and request_timeout_s > 0)
    ):
        raise ValueError(f"request_timeout_s must be > 0, -1 (the engine's default) or None, got {request_timeout_s!r}")
    state = _ServerState(
        engine, mode, api_key, max_body_bytes, max_tokens_limit, min(default_max_tokens, max_tokens_limit), compressor
    )
    state.timeout_s = request_timeout_s
    engine.add_listener(state.metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # The engine outlives the app (tests and benchmarks serve one engine many times).
        engine.remove_listener(state.metrics)

    app = FastAPI(
        title="hyco-rag",
        description="OpenAI-compatible chat completions with HyCo compression and DyPRAG deltas.",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.hyco = state
    app.add_middleware(_HTTPMetricsMiddleware, metrics=state.metrics)
    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        closed = state.engine_closed()
        body = {
            "status": "closed" if closed else "ok",
            "model": engine.name,
            "default_mode": state.default_mode.value,
            "modes": list(MODE_NAMES),
            "deltas": engine.translator is not None,
            "queue_depth": engine.queue_depth,
            "running": engine.running,
        }
        return JSONResponse(body, status_code=503 if closed else 200)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        state.check_auth(request)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        state.check_auth(request)
        return JSONResponse(ModelList(data=[state.card(name) for name in state.model_ids]).model_dump())

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> JSONResponse:
        state.check_auth(request)
        state.check_model(model_id)
        return JSONResponse(state.card(model_id).model_dump())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        state.check_auth(request)
        body = _parse(ChatCompletionRequest, await _read_body(request, state.max_body_bytes))
        return await state.chat(request, body)

    @app.post("/v1/compress")
    async def compress(request: Request) -> JSONResponse:
        state.check_auth(request)
        body = _parse(CompressRequest, await _read_body(request, state.max_body_bytes))
        return JSONResponse(await state.compress(body))

    return app


class _ServerState:
    """What the handlers share: the engine, the limits and the metrics."""

    def __init__(
        self,
        engine: ServingBackend,
        default_mode: Mode,
        api_key: str | None,
        max_body_bytes: int,
        max_tokens_limit: int,
        default_max_tokens: int,
        compressor: Any | None,
    ) -> None:
        self.engine = engine
        self.default_mode = default_mode
        self._api_key = api_key.encode("utf-8") if api_key is not None else None
        self.max_body_bytes = max_body_bytes
        self.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = default_max_tokens
        self.compressor = compressor
        self.metrics = ServerMetrics(engine)
        self.created = int(time.time())
        self.model_ids = list(dict.fromkeys([engine.name, DEFAULT_MODEL_ALIAS]))
        self.timeout_s: float | None = -1.0

    # ------------------------------------------------------------------ checks

    def engine_closed(self) -> bool:
        return bool(self.engine.closed)

    def check_auth(self, request: Request) -> None:
        if self._api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode("utf-8") if scheme.lower() == "bearer" else b""
        # compare_digest on equal-typed bytes: the time taken does not depend on where they differ.
        if not hmac.compare_digest(given, self._api_key):
            raise APIError(
                401,
                "missing or invalid API key; send 'Authorization: Bearer <key>'"
                if header
                else "this server needs an API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def check_model(self, model: str) -> None:
        if model not in self.model_ids:
            raise APIError(
                404,
                f"the model {model!r} does not exist on this server; it serves {self.engine.name!r} (also called {DEFAULT_MODEL_ALIAS!r})",
                code="model_not_found",
                param="model",
            )

    def card(self, model_id: str) -> ModelCard:
        return ModelCard(id=model_id, created=self.created)

    # ------------------------------------------------------------------ chat

    def _sampling(self, body: ChatCompletionRequest) -> SamplingParams:
        from hyco_rag.engine.sampling import SamplingParams

        if body.n not in (None, 1):
            raise APIError(400, "n must be 1: this server returns one choice per request", param="n")
        if body.tools:
            raise APIError(400, "tools are not supported by this server", param="tools")
        field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if max_tokens is None:
            max_tokens = self.default_max_tokens
        if max_tokens < 1:
            raise APIError(400, f"{field} must be >= 1, got {max_tokens}", param=field)
        if max_tokens > self.max_tokens_limit:
            raise APIError(400, f"{field}={max_tokens} is more than this server allows ({self.max_tokens_limit})", param=field)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > MAX_STOP_SEQUENCES:
            raise APIError(400, f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stop)}", param="stop")
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=body.temperature if body.temperature is not None else 0.0,
                top_p=body.top_p if body.top_p is not None else 1.0,
                stop=tuple(stop),
                seed=body.seed,
            )
        except ValueError as error:
            raise APIError(400, str(error)) from None

    async def chat(self, request: Request, body: ChatCompletionRequest) -> Response:
        self.check_model(body.model)
        sampling = self._sampling(body)
        messages = [_message(i, m) for i, m in enumerate(body.messages)]
        documents = _texts(body.documents) if body.documents is not None else None
        options = body.hyco
        mode = self.default_mode
        if options is not None and options.mode is not None:
            try:
                mode = Mode.parse(options.mode)
            except ValueError as error:
                raise APIError(400, f"hyco.{error}", param="hyco.mode") from None
        try:
            prepared = await self.engine.aprepare(
                messages,
                documents,
                mode=mode,
                compressor=self.compressor,
                rate=options.rate if options is not None else None,
                target_tokens=options.target_tokens if options is not None else None,
            )
            handle = self.engine.submit(prepared, sampling, timeout_s=self.timeout_s, loop=asyncio.get_running_loop())
            started = getattr(handle, "started", None)
            if body.stream and started is not None:
                # A remote backend prepares on its replica: its errors must still be a 4xx/5xx
                # status, not an SSE event after a 200, so wait for the first event here.
                await started()
        except Exception as error:
            raise _api_error(error) from error
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            stream = self._stream(handle, prepared, completion_id, created, include_usage)
            return _DisconnectAwareStreamingResponse(
                stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            )
        try:
            completion = await _unless_disconnected(request, handle.aresult(), handle.cancel)
        except _ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED)
        except Exception as error:
            raise _api_error(error) from error
        finally:
            handle.cancel()  # no-op once finished
        answer = ChatCompletion(
            id=completion_id,
            created=created,
            model=self.engine.name,
            choices=[
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "finish_reason": completion.finish_reason,
                }
            ],  # type: ignore[list-item]
            usage={
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "total_tokens": completion.total_tokens,
            },  # type: ignore[arg-type]
            hyco=prepared.stats(completion),
        )
        return JSONResponse(answer.model_dump())

    async def _stream(
        self, handle: ServingHandle, prepared: ServedRequest, completion_id: str, created: int, include_usage: bool
    ) -> AsyncIterator[str]:
        def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.engine.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
                **extra,
            }
            return _sse(payload)

        completion: Completion | None = None
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for item in handle:
                if isinstance(item, str):
                    yield chunk({"content": item})
                else:
                    completion = item
            assert completion is not None
            yield chunk({}, completion.finish_reason, hyco=prepared.stats(completion))
            if include_usage:
                usage = {
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                    "total_tokens": completion.total_tokens,
                }
                yield _sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": self.engine.name,
                        "choices": [],
                        "usage": usage,
                    }
                )
            yield "data: [DONE]\n\n"
        except (EngineError, ValueError) as error:
            # Headers are gone already: the error travels as an SSE event, which OpenAI clients raise.
            api = _api_error(error)
            yield _sse(api.body())
        finally:
            handle.cancel()  # the client went away (or the stream ended): free the batch slot

    # ------------------------------------------------------------------ compress

    async def compress(self, body: CompressRequest) -> dict[str, Any]:
        if body.query is not None and body.question is not None:
            raise APIError(400, "give 'query' or 'question', not both", param="query")
        query = body.query if body.query is not None else body.question
        if query is None:
            raise APIError(400, "'query' (or 'question') is required", param="query")
        budget = {
            k: v
            for k, v in (("rate", body.rate), ("target_tokens", body.target_tokens), ("threshold", body.threshold))
            if v is not None
        }
        if len(budget) > 1:
            raise APIError(
                400, f"give at most one of rate, target_tokens and threshold, got {', '.join(budget)}", param=next(iter(budget))
            )
        options = dict(budget)
        if body.hops is not None:
            options["hops"] = body.hops
        texts = _texts(body.documents)
        try:
            compressor = (
                self.compressor if self.compressor is not None else await asyncio.to_thread(lambda: self.engine.compressor)
            )
            acompress = getattr(compressor, "acompress", None)
            if acompress is not None:  # HyCo batches concurrent calls together
                result = await acompress(query, texts, **options)
            else:
                result = await asyncio.to_thread(compressor.compress, query, texts, **options)
        except (ValueError, TypeError) as error:
            raise APIError(400, str(error)) from None
        documents, stats = _compressed_documents(result, len(texts))
        self.metrics.compress_requests.inc()
        for kind in ("original_tokens", "compressed_tokens"):
            if isinstance(stats.get(kind), (int, float)):
                self.metrics.compress_tokens.labels(kind.split("_")[0]).inc(stats[kind])
        out: dict[str, Any] = {"documents": documents, "stats": stats}
        if body.id is not None:
            out = {"id": body.id, **out}
        return out


# ---------------------------------------------------------------------- helpers


def _compressed_documents(result: Any, count: int) -> tuple[list[str], dict[str, Any]]:
    """The CLI's output: one entry per input document, in input order, ``""`` where dropped."""
    passages = getattr(result, "passages", None)
    if passages is not None:
        texts = [""] * count
        for passage in passages:
            texts[passage.index] = "" if passage.dropped else passage.text
    else:
        out = getattr(result, "texts", None)
        if not isinstance(out, (list, tuple)) or not all(isinstance(t, str) for t in out):
            raise APIError(500, "the compressor returned no .texts list", code="compressor_error")
        texts = list(out)
    stats = getattr(result, "stats", None)
    return texts, json.loads(json.dumps(stats if isinstance(stats, dict) else {}, default=str))


def _message(index: int, message: ChatMessage) -> dict[str, str]:
    role = "system" if message.role == "developer" else message.role
    if role not in ("system", "user", "assistant"):
        raise APIError(
            400,
            f"messages[{index}] has role {message.role!r}; this server takes system, developer, user and assistant messages",
            param=f"messages.{index}.role",
        )
    content = message.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        parts = []
        for j, part in enumerate(content):
            if part.type != "text" or part.text is None:
                raise APIError(
                    400,
                    f"messages[{index}].content[{j}] is a {part.type!r} part; only text parts are supported",
                    param=f"messages.{index}.content",
                )
            parts.append(part.text)
        text = "\n".join(parts)
    return {"role": role, "content": text}


def _texts(documents: list[str | DocumentObject] | None) -> list[str]:
    return [doc if isinstance(doc, str) else doc.text for doc in documents or []]


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _api_error(error: BaseException) -> APIError:
    """The HTTP answer to an exception raised while preparing or generating."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, EngineOverloadedError):
        return APIError(429, str(error), code="engine_overloaded", headers={"Retry-After": "1"})
    if isinstance(error, RequestTimeoutError):
        return APIError(503, str(error), code="timeout")
    if isinstance(error, EngineClosedError):
        return APIError(503, str(error), code="engine_closed")
    if isinstance(error, RequestCancelledError):
        return APIError(503, str(error), code="cancelled")
    if isinstance(error, BackendUnavailableError):
        return APIError(503, str(error), code="backend_unavailable", headers={"Retry-After": "1"})
    if isinstance(error, ValueError):
        return APIError(400, str(error))
    logger.error("request failed", exc_info=error)
    return APIError(500, f"internal error: {type(error).__name__}: {error}", code="internal_error")


def _parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        message, param = validation_message(error.errors())
        raise APIError(422, message, code="invalid_request", param=param) from None


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise APIError(400, "the Content-Length header is not a number") from None
        if length > limit:
            raise APIError(413, f"the body has {length} bytes; this server accepts at most {limit}", code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the body is larger than this server accepts ({limit} bytes)", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _unless_disconnected(request: Request, awaitable: Awaitable[Any], on_disconnect: Callable[[], None]) -> Any:
    """Await ``awaitable``; if the client disconnects first, call ``on_disconnect`` and raise
    :class:`_ClientDisconnected` (after the body was read, the next ASGI message is the
    disconnect)."""

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    work = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        on_disconnect()
        work.cancel()
        with contextlib.suppress(BaseException):
            await work
        raise _ClientDisconnected()
    finally:
        for task in (work, watch):
            if not task.done():
                task.cancel()
        with contextlib.suppress(BaseException):
            await watch


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = validation_message(error.errors())
        return JSONResponse(error_body(422, message, code="invalid_request", param=param), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 404:
            message = (
                f"no route {request.method} {request.url.path}; see GET /v1/models, POST /v1/chat/completions, POST /v1/compress"
            )
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (allowed: {_header(error.headers, 'allow') or '?'})"
        else:
            message = str(error.detail)
        return JSONResponse(error_body(error.status_code, message), status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
        return JSONResponse(error_body(500, f"internal error: {type(error).__name__}", code="internal_error"), status_code=500)


def _header(headers: dict[str, str] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return None


def _version() -> str:
    from hyco_rag import __version__

    return str(__version__)
