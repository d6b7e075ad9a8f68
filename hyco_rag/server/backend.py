"""What the HTTP app needs from whatever serves it: the in-process engine or a remote one.

:func:`hyco_rag.server.create_app` is written against :class:`ServingBackend`, the part of
:class:`hyco_rag.engine.Engine` the handlers use, so one app (same routes, errors and
``/metrics``) serves both ``hyco-rag serve`` (an :class:`~hyco_rag.engine.Engine` in the
process) and ``hyco-rag serve --ray`` (:class:`hyco_rag.distributed.client.RayEngineClient`,
which forwards to Ray Serve deployment handles).  Keeping the protocol this small is what lets
the Ray ingress reuse the app instead of copying it.

Nothing here imports torch or Ray.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hyco_rag.engine.errors import EngineError

if TYPE_CHECKING:
    import asyncio

    from hyco_rag.engine.modes import Mode
    from hyco_rag.engine.request import Completion
    from hyco_rag.engine.sampling import SamplingParams
    from hyco_rag.engine.stats import EngineListener

__all__ = ["BackendUnavailableError", "ServedRequest", "ServingBackend", "ServingHandle", "ServingLimits", "ServingStats"]


class BackendUnavailableError(EngineError):
    """The replica that held a request died or could not be reached (the server answers 503
    with code ``backend_unavailable`` and ``Retry-After``); another replica may serve a retry."""


class ServingLimits(Protocol):
    """The batching limits ``/metrics`` reports (``EngineConfig`` has them)."""

    @property
    def max_batch_size(self) -> int: ...

    @property
    def max_queue(self) -> int: ...


class ServingStats(Protocol):
    """Running averages ``/metrics`` reports (``EngineStats`` has them)."""

    @property
    def mean_batch_size(self) -> float: ...

    @property
    def delta_cache_hit_rate(self) -> float: ...


class ServedRequest(Protocol):
    """A prepared request: the app only asks it for its costs (``PreparedRequest.stats``)."""

    def stats(self, completion: Completion | None = None) -> dict[str, Any]: ...


class ServingHandle(Protocol):
    """A submitted request (``RequestHandle``): awaited for its completion or iterated for
    its text pieces then the completion.  A handle may also define ``async started()``, which
    raises the request's preparation errors before a stream's headers are sent."""

    def cancel(self) -> None: ...

    async def aresult(self) -> Completion: ...

    def __aiter__(self) -> AsyncIterator[str | Completion]: ...


@runtime_checkable
class ServingBackend(Protocol):
    """What :func:`~hyco_rag.server.create_app` uses from its engine.

    ``translator`` is only tested against ``None`` (whether the delta modes work); the
    listeners receive the same events as :class:`~hyco_rag.engine.EngineListener`.
    """

    name: str
    translator: Any

    @property
    def config(self) -> ServingLimits: ...

    @property
    def stats(self) -> ServingStats: ...

    @property
    def queue_depth(self) -> int: ...

    @property
    def running(self) -> int: ...

    @property
    def delta_cache_entries(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    @property
    def compressor(self) -> Any: ...

    def add_listener(self, listener: EngineListener) -> None: ...

    def remove_listener(self, listener: EngineListener) -> None: ...

    async def aprepare(
        self,
        messages: Sequence[Mapping[str, str]] = (),
        documents: Sequence[str] | None = None,
        *,
        mode: Mode | str | None = None,
        compressor: Any | None = None,
        rate: float | None = None,
        target_tokens: int | None = None,
    ) -> Any: ...

    def submit(
        self,
        request: Any,
        sampling: SamplingParams | None = None,
        *,
        timeout_s: float | None = -1.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Any: ...
