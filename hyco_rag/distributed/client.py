"""The ingress side of Ray Serve: a :class:`~hyco_rag.server.backend.ServingBackend` that
forwards to the generator and compressor deployments, so :func:`hyco_rag.server.create_app`
serves them unchanged.

A chat request is prepared *and* decoded on one generator replica (its delta is built there,
from that replica's model, and never crosses the network): :meth:`RayEngineClient.aprepare`
only records the arguments, and the handle that :meth:`RayEngineClient.submit` returns makes
one call - unary for ``aresult()``, streaming (``handle.options(stream=True)``) for iteration.

Failures become the app's usual answers: the engine's own errors (overload, timeout, bad
input) keep their type; a replica that died (``RayActorError`` and kin) before the request
answered is retried on another replica up to ``retries`` times (greedy decoding is
deterministic, so the retry gives the answer the first try would have), and after that, or
once a stream has sent text, it becomes :class:`~hyco_rag.server.backend.BackendUnavailableError`
(a 503).  Every wait is bounded, so a replica that never answers is a 503 too, never a hang.

Metrics: each replica buffers its engine's listener events and sends them with every answer;
the client replays them into its own listeners (the app's Prometheus registry), so ``/metrics``
counts every replica's steps, requests and delta-cache lookups exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from hyco_rag.engine.errors import EngineOverloadedError, RequestCancelledError, RequestTimeoutError
from hyco_rag.engine.modes import Mode
from hyco_rag.engine.request import Completion
from hyco_rag.engine.stats import EngineListener, EngineStats
from hyco_rag.server.backend import BackendUnavailableError

if TYPE_CHECKING:
    from hyco_rag.engine.sampling import SamplingParams

logger = logging.getLogger(__name__)

__all__ = ["RayEngineClient", "RemoteCompressor", "RemotePreparedRequest", "RemoteRequestHandle", "translate_error"]

#: A replica's gauges older than this are not summed into queue depth / running rows.
_STALE_S = 60.0
#: Pause before a retry, so the router can hear that the replica died.
_RETRY_PAUSE_S = 0.2


def _replica_died_types() -> tuple[type[BaseException], ...]:
    import ray.exceptions as rex
    from ray.serve import exceptions as sex

    return (
        rex.RayActorError,  # ActorDiedError, ActorUnavailableError
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.ObjectLostError,
        sex.ReplicaUnavailableError,
        sex.DeploymentUnavailableError,
    )


def translate_error(error: BaseException) -> BaseException:
    """The app-facing error for one raised by a deployment call.

    User errors come back wrapped (``RayTaskError`` with ``.cause``): the cause is returned,
    so a ``ValueError`` is still a 400 with the engine's own message.  Ray Serve's back
    pressure is an overload (429); a dead or unreachable replica a
    :class:`BackendUnavailableError` (503).
    """
    import ray.exceptions as rex
    from ray.serve import exceptions as sex

    seen = 0
    while isinstance(error, rex.RayTaskError) and getattr(error, "cause", None) is not None and seen < 8:
        error = error.cause  # type: ignore[assignment]
        seen += 1
    if isinstance(error, sex.BackPressureError):
        return EngineOverloadedError(f"every generator replica is at its max_ongoing_requests: {error}")
    if isinstance(error, sex.RequestCancelledError):
        return RequestCancelledError("the request was cancelled")
    if isinstance(error, _replica_died_types()):
        return BackendUnavailableError(f"the replica serving this request is gone ({type(error).__name__}); retry")
    return error


def _is_replica_death(error: BaseException) -> bool:
    return isinstance(translate_error(error), BackendUnavailableError)


@dataclass
class _ReplicaGauges:
    queue_depth: int = 0
    running: int = 0
    delta_cache_entries: int = 0
    seen: float = 0.0


class _Limits:
    """``config`` of the client: the generator replicas' batching limits."""

    def __init__(self, max_batch_size: int, max_queue: int, timeout_s: float | None) -> None:
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.timeout_s = timeout_s


class RemotePreparedRequest:
    """The arguments of a chat request, and its costs once a replica has prepared it."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.prepared_stats: dict[str, Any] | None = None
        self.final_stats: dict[str, Any] | None = None

    def stats(self, completion: Completion | None = None) -> dict[str, Any]:
        """The replica's ``PreparedRequest.stats`` (with the completion's when it finished)."""
        if completion is not None and self.final_stats is not None:
            return dict(self.final_stats)
        return dict(self.prepared_stats or self.final_stats or {})


class RemoteCompressor:
    """``acompress`` / ``compress`` through a deployment with a ``compress`` method; returns
    ``.texts`` (one per document, ``""`` where dropped) and ``.stats``, what ``/v1/compress``
    and ``Engine.prepare`` read from a compressor."""

    def __init__(self, handle: Any, *, in_target_tokens: bool, wait_s: float | None) -> None:
        self.handle = handle
        self.in_target_tokens = in_target_tokens
        self.wait_s = wait_s

    async def acompress(self, query: str, documents: Sequence[str], **budget: Any) -> SimpleNamespace:
        try:
            out = await asyncio.wait_for(
                self.handle.compress.remote(query, list(documents), budget, self.in_target_tokens), self.wait_s
            )
        except asyncio.TimeoutError:
            raise BackendUnavailableError(f"the compressor did not answer within {self.wait_s:g} s") from None
        except Exception as error:
            raise translate_error(error) from None
        return SimpleNamespace(texts=list(out["texts"]), stats=out["stats"])

    def compress(self, query: str, documents: Sequence[str], **budget: Any) -> SimpleNamespace:
        """Blocking; call it off the event loop (``Engine.prepare`` runs in a thread)."""
        try:
            out = self.handle.compress.remote(query, list(documents), budget, self.in_target_tokens).result(timeout_s=self.wait_s)
        except TimeoutError:
            raise BackendUnavailableError(f"the compressor did not answer within {self.wait_s:g} s") from None
        except Exception as error:
            raise translate_error(error) from None
        return SimpleNamespace(texts=list(out["texts"]), stats=out["stats"])


def _completion(data: Mapping[str, Any]) -> Completion:
    return Completion(
        text=str(data["text"]),
        prompt_tokens=int(data["prompt_tokens"]),
        completion_tokens=int(data["completion_tokens"]),
        finish_reason=str(data["finish_reason"]),
        timings=dict(data.get("timings") or {}),
    )


class RemoteRequestHandle:
    """A chat request on its way to a generator replica (the ``RequestHandle`` surface)."""

    def __init__(self, client: RayEngineClient, prepared: RemotePreparedRequest) -> None:
        self.client = client
        self.prepared = prepared
        self._cancelled = False
        self._call: Any = None  # the DeploymentResponse(Generator) in flight
        self._stream: Any = None
        self._sent_text = False

    def cancel(self) -> None:
        """Cancel the replica's work (its engine frees the batch slot at the next step)."""
        self._cancelled = True
        call = self._call
        if call is not None:
            with contextlib.suppress(Exception):
                call.cancel()

    # ------------------------------------------------------------------ unary

    async def aresult(self) -> Completion:
        """The completion, from one unary call (retried on another replica if this one dies)."""
        attempt = 0
        while True:
            self._check_cancelled()
            self._call = self.client.generator.generate.remote(self.prepared.payload)
            try:
                out = await self._wait(self._call)
            except asyncio.CancelledError:
                self.cancel()
                raise
            except Exception as error:
                if _is_replica_death(error) and attempt < self.client.retries and not self._cancelled:
                    attempt += 1
                    self.client.note_retry(error)
                    await asyncio.sleep(_RETRY_PAUSE_S)
                    continue
                raise translate_error(error) from None
            return self._finished(out)

    # ------------------------------------------------------------------ streaming

    async def started(self) -> None:
        """Start the streaming call and wait until the replica has prepared the request, so a
        bad request is refused (4xx) before any stream headers go out."""
        if self._stream is not None:
            return
        attempt = 0
        while True:
            self._check_cancelled()
            self._call = self._stream = self.client.generator.options(stream=True).stream.remote(self.prepared.payload)
            try:
                first = await self._wait(self._stream.__anext__())
            except StopAsyncIteration:
                raise BackendUnavailableError("the replica ended the stream before preparing the request") from None
            except asyncio.CancelledError:
                self.cancel()
                raise
            except Exception as error:
                if _is_replica_death(error) and attempt < self.client.retries and not self._cancelled:
                    attempt += 1
                    self.client.note_retry(error)
                    await asyncio.sleep(_RETRY_PAUSE_S)
                    continue
                raise translate_error(error) from None
            self.prepared.prepared_stats = first.get("stats")
            return

    async def __aiter__(self) -> AsyncIterator[str | Completion]:
        """Text pieces, then the :class:`Completion` (errors are raised, already translated)."""
        await self.started()
        attempt = 0
        try:
            while True:
                try:
                    event = await self._wait(self._stream.__anext__())
                except StopAsyncIteration:
                    raise BackendUnavailableError("the replica ended the stream before the answer was complete") from None
                except Exception as error:
                    if _is_replica_death(error) and not self._sent_text and attempt < self.client.retries and not self._cancelled:
                        # Nothing reached the client yet: start over on another replica.
                        attempt += 1
                        self.client.note_retry(error)
                        self._stream = None
                        await asyncio.sleep(_RETRY_PAUSE_S)
                        await self.started()
                        continue
                    raise translate_error(error) from None
                kind = event.get("event")
                if kind == "text":
                    self._sent_text = True
                    yield str(event["text"])
                elif kind == "done":
                    yield self._finished(event)
                    return
        finally:
            self.cancel()  # no-op once the replica finished

    # ------------------------------------------------------------------ helpers

    def _check_cancelled(self) -> None:
        if self._cancelled:
            raise RequestCancelledError("the request was cancelled")

    async def _wait(self, awaitable: Any) -> Any:
        from hyco_rag.engine.worker import wait_with_timeout  # the engine's worker imports torch

        wait_s = self.client.wait_s
        try:
            return await wait_with_timeout(awaitable, wait_s)  # asyncio.wait_for can swallow a cancel
        except asyncio.TimeoutError:
            self.cancel()
            raise RequestTimeoutError(
                f"no answer from a generator replica within {wait_s:g} s (the replica may be stuck or gone)"
            ) from None

    def _finished(self, out: Mapping[str, Any]) -> Completion:
        completion = _completion(out["completion"])
        self.prepared.final_stats = out.get("stats")
        if self.prepared.prepared_stats is None:
            self.prepared.prepared_stats = out.get("stats")
        self.client.absorb(out.get("report"))
        return completion


class RayEngineClient:
    """The :class:`~hyco_rag.server.backend.ServingBackend` of the Ray Serve ingress.

    Build it with :meth:`connect` (it asks a generator replica what it serves).

    Args:
        generator: handle of the generator deployment (``GeneratorServer``).
        compressor: handle of the compressor deployment, or ``None`` (``/v1/compress`` then
            runs on a generator replica, with its engine's compressor).
        info: what the generator replicas serve (``GeneratorServer.info()``).
        retries: resends of a request whose replica died before answering.
        wait_s: longest wait for one answer (``None``: none).
    """

    def __init__(
        self,
        generator: Any,
        compressor: Any | None,
        info: Mapping[str, Any],
        *,
        retries: int = 2,
        wait_s: float | None = None,
    ) -> None:
        self.generator = generator
        self.compressor_handle = compressor
        self.name = str(info["name"])
        # Only tested against None by the app: whether the delta modes work on the replicas.
        self.translator: Any = "remote" if info.get("deltas") else None
        self.config = _Limits(int(info["max_batch_size"]), int(info["max_queue"]), info.get("timeout_s"))
        self.retries = retries
        self.wait_s = wait_s
        self.stats = EngineStats()
        self.listeners: list[Any] = [self.stats]
        self._replicas: dict[str, _ReplicaGauges] = {}
        self._closed = False
        self._compressor = RemoteCompressor(
            compressor if compressor is not None else generator, in_target_tokens=False, wait_s=wait_s
        )

    @classmethod
    async def connect(
        cls, generator: Any, compressor: Any | None = None, *, retries: int = 2, wait_s: float | None = None
    ) -> RayEngineClient:
        """Ask a generator replica what it serves, then build the client."""
        info = await asyncio.wait_for(generator.info.remote(), wait_s)
        client = cls(generator, compressor, info, retries=retries, wait_s=wait_s)
        client.absorb(info.get("report"))
        return client

    # ------------------------------------------------------------------ ServingBackend

    @property
    def queue_depth(self) -> int:
        return sum(g.queue_depth for g in self._fresh())

    @property
    def running(self) -> int:
        return sum(g.running for g in self._fresh())

    @property
    def delta_cache_entries(self) -> int:
        return sum(g.delta_cache_entries for g in self._fresh())

    @property
    def replicas_seen(self) -> int:
        """Generator replicas that reported within the last minute."""
        return len(self._fresh())

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True

    @property
    def compressor(self) -> RemoteCompressor:
        return self._compressor

    def add_listener(self, listener: EngineListener) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: EngineListener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    async def aprepare(
        self,
        messages: Sequence[Mapping[str, str]] = (),
        documents: Sequence[str] | None = None,
        *,
        mode: Mode | str | None = None,
        compressor: Any | None = None,
        rate: float | None = None,
        target_tokens: int | None = None,
    ) -> RemotePreparedRequest:
        """Record the request; the replica prepares it (and raises its errors) when it runs.

        ``compressor`` must be ``None``: on Ray the compressor is the compressor deployment.
        """
        if compressor is not None:
            raise ValueError("with Ray Serve the compressor is the compressor deployment; pass none to create_app")
        if self._closed:
            from hyco_rag.engine.errors import EngineClosedError

            raise EngineClosedError("the Ray Serve client was closed")
        payload: dict[str, Any] = {
            "messages": [dict(m) for m in messages],
            "documents": list(documents) if documents is not None else None,
            "mode": Mode.parse(mode).value if mode is not None else None,
            "rate": rate,
            "target_tokens": target_tokens,
        }
        return RemotePreparedRequest(payload)

    def submit(
        self,
        request: RemotePreparedRequest,
        sampling: SamplingParams | None = None,
        *,
        timeout_s: float | None = -1.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> RemoteRequestHandle:
        """A handle for ``request``; nothing is sent until it is awaited or iterated."""
        from hyco_rag.engine.sampling import SamplingParams

        sampling = sampling or SamplingParams()
        request.payload["sampling"] = {
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stop": list(sampling.stop),
            "seed": sampling.seed,
        }
        request.payload["timeout_s"] = timeout_s
        return RemoteRequestHandle(self, request)

    # ------------------------------------------------------------------ reports

    def absorb(self, report: Mapping[str, Any] | None) -> None:
        """Replay a replica's buffered engine events into the listeners; keep its gauges."""
        if not report:
            return
        replica = str(report.get("replica", "?"))
        self._replicas[replica] = _ReplicaGauges(
            int(report.get("queue_depth", 0)),
            int(report.get("running", 0)),
            int(report.get("delta_cache_entries", 0)),
            time.monotonic(),
        )
        events = report.get("events") or {}
        for listener in list(self.listeners):
            for args in events.get("requests", ()):
                listener.on_request(*args)
            for size, count in events.get("steps", {}).items():
                for _ in range(int(count)):
                    listener.on_step(int(size), 0)
            hits, misses = events.get("delta_cache", (0, 0))
            if hits or misses:
                listener.on_delta_cache(int(hits), int(misses))

    def note_retry(self, error: BaseException) -> None:
        logger.warning("a generator replica died mid-request (%s); retrying on another replica", type(error).__name__)
        for listener in list(self.listeners):
            on_retry = getattr(listener, "on_backend_retry", None)
            if on_retry is not None:
                on_retry()

    async def refresh(self) -> None:
        """Ask one replica for its report (``/metrics`` on a quiet server)."""
        with contextlib.suppress(Exception):
            self.absorb(await asyncio.wait_for(self.generator.report.remote(), 5.0))

    def _fresh(self) -> list[_ReplicaGauges]:
        now = time.monotonic()
        return [g for g in self._replicas.values() if now - g.seen <= _STALE_S]
