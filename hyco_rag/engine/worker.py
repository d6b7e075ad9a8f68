"""The one thread that owns the served model: its forwards, its hooks, its KV cache.

Callers never run the model.  They submit work and wait on a :class:`RequestHandle` (sync,
async or streaming); the :class:`EngineWorker` thread loops:

1. run queued *jobs* (passage encoding for deltas: it runs the model, so it runs here, never
   while hooks are registered); the waiting requests' passages are encoded in one batch;
2. drop waiting requests that were cancelled or timed out;
3. **admit** waiting requests into the running batch while it has free slots (prefill);
4. one **decode step** for every running row; rows that finished (end of sequence, stop
   sequence, ``max_tokens``), were cancelled or timed out leave the batch at once.

So new requests join between decode steps and finished ones leave (continuous batching at
step granularity).  The waiting queue is bounded: :meth:`EngineWorker.submit` raises
:class:`~hyco_rag.engine.errors.EngineOverloadedError` instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from hyco_rag.engine.batch import DecodeBatch, Row
from hyco_rag.engine.errors import EngineClosedError, EngineOverloadedError, RequestCancelledError, RequestTimeoutError
from hyco_rag.engine.request import Completion, PreparedRequest
from hyco_rag.engine.sampling import SamplingParams
from hyco_rag.engine.stats import EngineListener

logger = logging.getLogger(__name__)

#: How much longer than its own timeout a caller waits for the worker to report a request's
#: end before it gives up on it (the worker checks timeouts between steps).
_WAIT_GRACE_S = 5.0


class RequestHandle:
    """A submitted request: iterate it for text pieces, or wait for its :class:`Completion`.

    Events cross from the worker thread through a thread-safe queue, or, for a handle bound
    to an event loop, through ``call_soon_threadsafe`` into an ``asyncio.Queue``, so an async
    consumer never blocks its loop.  Closing, cancelling or abandoning the iteration cancels
    the request; the worker frees its batch slot at the next step.
    """

    def __init__(
        self, request: PreparedRequest, sampling: SamplingParams, timeout_s: float | None, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        self.request = request
        self.sampling = sampling
        self.submitted_at = time.perf_counter()
        self.deadline = self.submitted_at + timeout_s if timeout_s is not None else None
        self.timeout_s = timeout_s
        self._cancelled = threading.Event()
        self._loop = loop
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._aevents: asyncio.Queue[tuple[str, Any]] | None = asyncio.Queue() if loop is not None else None
        self._done = False
        self.admitted_at: float | None = None

    # ------------------------------------------------------------------ worker side

    def _push(self, kind: str, value: Any) -> None:
        if self._aevents is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
                self._loop.call_soon_threadsafe(self._aevents.put_nowait, (kind, value))
        else:
            self._events.put((kind, value))

    def abort_reason(self) -> BaseException | None:
        if self._cancelled.is_set():
            return RequestCancelledError("the request was cancelled")
        if self.deadline is not None and time.perf_counter() > self.deadline:
            return RequestTimeoutError(f"the request did not finish within its timeout of {self.timeout_s:g} s")
        return None

    # ------------------------------------------------------------------ caller side

    def cancel(self) -> None:
        """Ask the worker to drop this request (no effect once it has finished)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _wait_s(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.perf_counter()) + _WAIT_GRACE_S

    def _next_sync(self) -> tuple[str, Any]:
        try:
            return self._events.get(timeout=self._wait_s())
        except queue.Empty:
            self.cancel()
            return "error", RequestTimeoutError(f"the request did not finish within its timeout of {self.timeout_s:g} s")

    async def _next_async(self) -> tuple[str, Any]:
        assert self._aevents is not None
        try:
            return await asyncio.wait_for(self._aevents.get(), self._wait_s())
        except asyncio.TimeoutError:
            self.cancel()
            return "error", RequestTimeoutError(f"the request did not finish within its timeout of {self.timeout_s:g} s")

    def __iter__(self) -> Iterator[str | Completion]:
        """Text pieces (``str``) as generated, then the :class:`Completion`; errors are raised."""
        if self._aevents is not None:
            raise RuntimeError("this handle was submitted for async use; iterate it with 'async for'")
        try:
            while True:
                kind, value = self._next_sync()
                if kind == "text":
                    yield value
                elif kind == "done":
                    self._done = True
                    yield value
                    return
                else:
                    self._done = True
                    raise value
        finally:
            if not self._done:
                self.cancel()

    async def __aiter__(self) -> AsyncIterator[str | Completion]:
        if self._aevents is None:
            raise RuntimeError("this handle was submitted for sync use; iterate it with 'for'")
        try:
            while True:
                kind, value = await self._next_async()
                if kind == "text":
                    yield value
                elif kind == "done":
                    self._done = True
                    yield value
                    return
                else:
                    self._done = True
                    raise value
        finally:
            if not self._done:
                self.cancel()

    def result(self) -> Completion:
        """Wait for the whole completion (blocking)."""
        for item in self:
            if isinstance(item, Completion):
                return item
        raise RuntimeError("the request ended without a completion")  # pragma: no cover

    async def aresult(self) -> Completion:
        async for item in self:
            if isinstance(item, Completion):
                return item
        raise RuntimeError("the request ended without a completion")  # pragma: no cover


class _Job:
    """Work for the model outside decoding, merged with the other waiting jobs of the same
    ``batch_fn`` into one call over all their items."""

    def __init__(self, items: list[Any], batch_fn: Callable[[list[Any]], list[Any]]) -> None:
        self.items = items
        self.batch_fn = batch_fn
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


class EngineWorker:
    """The model-owning thread and its bounded waiting queue.

    Args:
        batch: the decode batch of the served model.
        max_batch_size: most rows decoded together.
        max_queue: most requests waiting for a slot; more are refused with
            :class:`EngineOverloadedError`.
        listeners: told about every step and finished request.
    """

    def __init__(self, batch: DecodeBatch, *, max_batch_size: int, max_queue: int, listeners: list[EngineListener]) -> None:
        self.batch = batch
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.listeners = listeners
        self._waiting: deque[tuple[RequestHandle, Row]] = deque()
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def on_worker_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def _ensure_started(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed")
        if self._failure is not None:
            raise EngineClosedError(f"the engine's worker died: {self._failure!r}")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hyco-rag-engine", daemon=True)
            self._thread.start()
            atexit.register(self.close)  # end the loop before the interpreter tears torch down

    def close(self) -> None:
        """Stop the worker; waiting and running requests end with :class:`EngineClosedError`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and not self.on_worker_thread:
            self._thread.join(timeout=30)

    @property
    def closed(self) -> bool:
        return self._closed or self._failure is not None

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self.batch)

    # ------------------------------------------------------------------ submitting

    def run_batched(self, items: list[Any], batch_fn: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """``batch_fn(items)`` on the worker thread, merged with other callers' waiting items.

        Concurrent requests that each need their passages encoded share one batched forward
        instead of queueing one encoding after another between decode steps.
        """
        if self.on_worker_thread:
            return batch_fn(items)
        job = _Job(list(items), batch_fn)
        with self._cond:
            self._ensure_started()
            self._jobs.append(job)
            self._cond.notify_all()
        return job.future.result()  # type: ignore[no-any-return]

    def submit(
        self,
        request: PreparedRequest,
        sampling: SamplingParams,
        *,
        timeout_s: float | None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> RequestHandle:
        handle = RequestHandle(request, sampling, timeout_s, loop)
        row = Row(list(request.prompt_ids), sampling, request.delta)
        row.on_text = lambda piece: handle._push("text", piece)
        row.on_finish = lambda finished: self._finish(handle, finished)
        row.on_error = lambda error: self._fail(handle, error)
        row.should_abort = handle.abort_reason
        with self._cond:
            self._ensure_started()
            if len(self._waiting) >= self.max_queue:
                raise EngineOverloadedError(
                    f"the engine is overloaded: {len(self._waiting)} requests are already waiting "
                    f"(max_queue={self.max_queue}); retry later"
                )
            self._waiting.append((handle, row))
            self._cond.notify_all()
        return handle

    # ------------------------------------------------------------------ reporting

    def _finish(self, handle: RequestHandle, row: Row) -> None:
        now = time.perf_counter()
        timings = {"generate": now - handle.submitted_at}
        if handle.admitted_at is not None:
            timings["queue"] = handle.admitted_at - handle.submitted_at
        if row.first_token_at is not None:
            timings["first_token"] = row.first_token_at - handle.submitted_at
        completion = Completion(row.text, len(row.prompt_ids), len(row.generated), row.finish_reason or "stop", timings)
        self._notify_request("ok", handle, row, now)
        handle._push("done", completion)

    def _fail(self, handle: RequestHandle, error: BaseException) -> None:
        status = (
            "cancelled"
            if isinstance(error, RequestCancelledError)
            else "timeout"
            if isinstance(error, RequestTimeoutError)
            else "error"
        )
        self._notify_request(status, handle, None, time.perf_counter())
        handle._push("error", error)

    def _notify_request(self, status: str, handle: RequestHandle, row: Row | None, now: float) -> None:
        first = row.first_token_at - handle.submitted_at if row is not None and row.first_token_at is not None else None
        prompt = len(row.prompt_ids) if row is not None else 0
        completion = len(row.generated) if row is not None else 0
        for listener in self.listeners:
            try:
                listener.on_request(status, now - handle.submitted_at, first, prompt, completion)
            except Exception:
                logger.exception("an engine listener failed")

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._closed or self._jobs or self._waiting or len(self.batch)):
                        self._cond.wait()
                    if self._closed:
                        break
                    jobs = list(self._jobs)
                    self._jobs.clear()
                self._run_jobs(jobs)
                self._admit()
                if len(self.batch):
                    try:
                        self.batch.step()
                    except Exception as error:
                        logger.exception("a decode step failed; its %d rows end with the error", len(self.batch))
                        self.batch.fail_all(error)
                    self.batch.evict()
                    depth = self.queue_depth
                    for listener in self.listeners:
                        listener.on_step(len(self.batch), depth)
        except BaseException as error:  # the loop itself broke: nothing can be served any more
            self._failure = error
            logger.exception("the engine worker died")
        finally:
            self._shutdown()

    @staticmethod
    def _run_jobs(jobs: list[_Job]) -> None:
        groups: dict[Any, list[_Job]] = {}
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                groups.setdefault(job.batch_fn, []).append(job)
        for group in groups.values():
            try:
                results = group[0].batch_fn([item for job in group for item in job.items])
                offset = 0
                for job in group:
                    job.future.set_result(results[offset : offset + len(job.items)])
                    offset += len(job.items)
            except BaseException as error:
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(error)

    def _admit(self) -> None:
        newcomers: list[Row] = []
        with self._cond:
            kept: deque[tuple[RequestHandle, Row]] = deque()
            while self._waiting:
                handle, row = self._waiting.popleft()
                reason = handle.abort_reason()
                if reason is not None:
                    self._fail(handle, reason)
                elif len(self.batch) + len(newcomers) < self.max_batch_size:
                    handle.admitted_at = time.perf_counter()
                    newcomers.append(row)
                else:
                    kept.append((handle, row))
            self._waiting = kept
        if not newcomers:
            return
        try:
            self.batch.admit(newcomers)
        except Exception as error:
            logger.exception("prefill of %d new rows failed; they end with the error", len(newcomers))
            for row in newcomers:
                row.finish_reason = "error"
                row.on_error(error)
            return
        self.batch.evict()  # rows that finished on their first token

    def _shutdown(self) -> None:
        error = (
            EngineClosedError("the engine is closed")
            if self._failure is None
            else EngineClosedError(f"the engine's worker died: {self._failure!r}")
        )
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            jobs, self._jobs = list(self._jobs), deque()
        for handle, _ in waiting:
            self._fail(handle, error)
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)
        self.batch.fail_all(error)
