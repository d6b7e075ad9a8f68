"""The threads that run the served model: the decode thread steps the running batch, the job
thread encodes passages and prefills new requests beside it.

Callers never run the model.  They submit work and wait on a :class:`RequestHandle` (sync,
async or streaming).  The :class:`EngineWorker` has two threads:

* the **decode thread** loops: merge rows prefilled meanwhile into the running batch, then one
  **decode step** for every running row; rows that finished (end of sequence, stop sequence,
  ``max_tokens``), were cancelled or timed out leave the batch at once;
* the **job thread** runs *jobs* first (encoding and translating the passages of requests still
  being prepared; waiting jobs are merged into calls of at most :attr:`EngineWorker.max_job_items`
  items, so the first requests of a burst start while later ones are still encoded), then
  **prefills** waiting requests for the batch's free slots and hands them to the decode thread.

So new requests join between decode steps and finished ones leave (continuous batching at
step granularity), and the compute-bound work of new requests (encoding, prefill) runs beside
the memory-bound decode instead of stalling every running row: on a CPU it uses a second core.
When rows wait while the job thread is busy and has a backlog (or nothing is running), the
decode thread prefills them itself (:meth:`EngineWorker._inline_work` says when that pays).  Both threads run the same model; delta
hooks act only on the thread that applied them (:mod:`hyco_rag.dyprag.injection`).  The waiting
queue is bounded: :meth:`EngineWorker.submit` raises
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from hyco_rag.engine.batch import DecodeBatch, Prefilled, Row
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
            return await wait_with_timeout(self._aevents.get(), self._wait_s())
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


async def wait_with_timeout(awaitable: Awaitable[Any], timeout_s: float | None) -> Any:
    """``await awaitable`` within ``timeout_s`` (``None``: no limit), never swallowing a cancel.

    Python 3.10/3.11's ``asyncio.wait_for`` returns the inner result when the waiting task is
    cancelled just as that result arrives, so a cancelled request would run on to its end
    (a token event arrives every decode step, so this happens); ``asyncio.timeout`` (3.11+)
    raises the ``CancelledError``.
    """
    if timeout_s is None:
        return await awaitable
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:  # Python 3.10: wait_for, with its race
        return await asyncio.wait_for(awaitable, timeout_s)
    async with timeout(timeout_s):
        return await awaitable


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

    #: Most items (passages) that waiting jobs merge into one call (a job is never split).
    max_job_items = 4

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
        self._job_thread: threading.Thread | None = None
        self._ready: deque[Prefilled] = deque()  # prefilled on the job thread, to merge
        self._claimed = 0  # rows taken from the queue for prefill and not merged yet
        self._job_busy = False
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def on_worker_thread(self) -> bool:
        """Whether the caller is one of this worker's threads (decode or jobs)."""
        current = threading.current_thread()
        return current is self._thread or current is self._job_thread

    def _ensure_started(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed")
        if self._failure is not None:
            raise EngineClosedError(f"the engine's worker died: {self._failure!r}")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hyco-rag-engine", daemon=True)
            self._job_thread = threading.Thread(target=self._run_job_loop, name="hyco-rag-engine-jobs", daemon=True)
            self._thread.start()
            self._job_thread.start()
            atexit.register(self.close)  # end the loops before the interpreter tears torch down

    def close(self) -> None:
        """Stop the worker; waiting and running requests end with :class:`EngineClosedError`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if not self.on_worker_thread:
            for thread in (self._thread, self._job_thread):
                if thread is not None:
                    thread.join(timeout=30)

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
        """``batch_fn(items)`` on the job thread, merged with other callers' waiting items.

        Concurrent requests that each need their passages encoded share batched forwards
        (:attr:`max_job_items` at most) on the job thread, while the decode thread goes on.
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
        row = Row(list(request.prompt_ids), sampling, request.delta, request.soft_embeds, request.soft_start)
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
        """The decode thread: merge what was prefilled, prefill inline only while the job thread
        is busy, and step the running batch."""
        try:
            while True:
                with self._cond:
                    while not (self._closed or self._ready or len(self.batch) or self._inline_work()):
                        self._cond.wait()
                    if self._closed:
                        break
                    ready, self._ready = list(self._ready), deque()
                    inline = self._claim() if self._inline_work() else []
                for prefilled in ready:
                    self._merge(prefilled)
                if inline:  # the job thread is busy: prefill here rather than let rows wait
                    for prefilled in self._prefill(inline):
                        self._merge(prefilled)
                if len(self.batch):
                    try:
                        self.batch.step()
                    except Exception as error:
                        logger.exception("a decode step failed; its %d rows end with the error", len(self.batch))
                        self.batch.fail_all(error)
                    self._evict()
                    depth = self.queue_depth
                    for listener in self.listeners:
                        listener.on_step(len(self.batch), depth)
        except BaseException as error:  # the loop itself broke: nothing can be served any more
            self._failure = error
            logger.exception("the engine worker died")
        finally:
            self._shutdown()

    def _run_job_loop(self) -> None:
        """The job thread, until closed: the prefill of waiting requests for free slots first
        (they are the closest to producing tokens), else encoding jobs (a bounded merge of
        them at a time)."""
        try:
            while True:
                with self._cond:
                    while not (self._closed or self._jobs or (self._waiting and self._free_slots() > 0)):
                        self._job_busy = False
                        self._cond.wait()
                    if self._closed:
                        return  # _shutdown fails the jobs still waiting
                    self._job_busy = True
                    jobs: list[_Job] = []
                    rows = self._claim() if self._waiting and self._free_slots() > 0 else []
                    if not rows and self._jobs:
                        jobs = [self._jobs.popleft()]
                        items = len(jobs[0].items)
                        while self._jobs and items + len(self._jobs[0].items) <= self.max_job_items:
                            items += len(self._jobs[0].items)
                            jobs.append(self._jobs.popleft())
                if jobs:
                    self._run_jobs(jobs)
                for prefilled in self._prefill(rows):
                    with self._cond:
                        closed = self._closed
                        if not closed:
                            self._ready.append(prefilled)
                            self._cond.notify_all()
                    if closed:  # the decode thread has shut down: nobody will merge these rows
                        self._release(prefilled.rows, EngineClosedError("the engine is closed"))
        except BaseException as error:
            self._failure = error
            logger.exception("the engine's job thread died")
            self.close()
        finally:
            with self._cond:
                self._job_busy = False

    # ------------------------------------------------------------------ slots

    def _free_slots(self) -> int:
        """Rows that may still be claimed for prefill (under the condition's lock)."""
        return self.max_batch_size - len(self.batch) - self._claimed

    def _inline_work(self) -> bool:
        """Whether the decode thread should prefill itself (under the condition's lock): rows
        wait for free slots, the job thread is busy, and either nothing is running or the job
        thread has a backlog of encodings too.  A prefill here stalls every running row, so it
        pays only when the job thread is the bottleneck (prefill-heavy load: several passages,
        short answers); under decode-heavy load the decode thread is the bottleneck and leaves
        prefill to the job thread."""
        if not (self._waiting and self._free_slots() > 0 and self._job_busy):
            return False
        return not len(self.batch) or bool(self._jobs)

    def _claim(self) -> list[Row]:
        """Waiting rows for the free slots, in order; cancelled or timed-out ones end here
        (under the condition's lock).  Claimed rows count against the batch size until they
        are merged or fail."""
        claimed: list[Row] = []
        kept: deque[tuple[RequestHandle, Row]] = deque()
        free = self._free_slots()
        while self._waiting:
            handle, row = self._waiting.popleft()
            reason = handle.abort_reason()
            if reason is not None:
                self._fail(handle, reason)
            elif len(claimed) < free:
                handle.admitted_at = time.perf_counter()
                claimed.append(row)
            else:
                kept.append((handle, row))
        self._waiting = kept
        self._claimed += len(claimed)
        return claimed

    def _prefill(self, rows: list[Row]) -> Iterator[Prefilled]:
        """Prefill claimed rows group by group; when a group's forward fails, it and the
        groups after it end with the error (groups yielded before stay)."""
        pending = list(rows)
        try:
            for prefilled in self.batch.prefill(rows):
                done = {id(row) for row in prefilled.rows}
                pending = [row for row in pending if id(row) not in done]
                yield prefilled
        except Exception as error:
            logger.exception("prefill of %d new rows failed; they end with the error", len(pending))
            self._release(pending, error)

    def _merge(self, prefilled: Prefilled) -> None:
        """Merge prefilled rows into the batch (decode thread) and release their claims."""
        try:
            self.batch.merge(prefilled)
        except Exception as error:
            logger.exception("merging %d prefilled rows failed; they end with the error", len(prefilled.rows))
            self._release(prefilled.rows, error)
            return
        with self._cond:
            self._claimed -= len(prefilled.rows)
        self._evict()  # rows that finished on their first token

    def _release(self, rows: list[Row], error: BaseException) -> None:
        """Claimed rows that will never join the batch: their slots are freed, they end with ``error``."""
        with self._cond:
            self._claimed -= len(rows)
            self._cond.notify_all()
        for row in rows:
            row.finish_reason = "error"
            row.on_error(error)

    def _evict(self) -> None:
        if self.batch.evict():
            with self._cond:
                self._cond.notify_all()  # free slots: the job thread may prefill waiting rows

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
            ready, self._ready = list(self._ready), deque()
            self._cond.notify_all()  # the job thread ends too
        for handle, _ in waiting:
            self._fail(handle, error)
        for prefilled in ready:
            self._release(prefilled.rows, error)
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)
        self.batch.fail_all(error)
