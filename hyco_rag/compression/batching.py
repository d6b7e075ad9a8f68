"""Micro-batching for async callers: concurrent requests share forward passes.

Why a worker thread and not ``asyncio.to_thread`` per call: per-call threads would run one
request per forward (and fight over the CPU cores). Here every request that arrives while the
worker is busy, or within ``max_wait_s`` of the first, joins the next batch, so under load
the batches grow on their own. The event loop never blocks: callers await a future.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

logger = logging.getLogger(__name__)


class MicroBatcher:
    """Collects submitted items and runs ``run(items) -> results`` on them in one call."""

    def __init__(
        self,
        run: Callable[[list[Any]], list[Any]],
        *,
        max_wait_s: float = 0.005,
        max_items: int = 64,
        idle_exit_s: float = 30.0,
    ) -> None:
        self._run = run
        self.max_wait_s = max_wait_s
        self.max_items = max_items
        self.idle_exit_s = idle_exit_s
        self._queue: queue.Queue[tuple[Any, Future] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches_run = 0  # how many run() calls so far (tests and stats read it)

    def submit(self, item: Any) -> Future:
        """Queue ``item``; the returned future resolves to its result (or its exception)."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the compressor was closed")
            self._queue.put((item, future))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="hyco-compress-batcher", daemon=True)
                self._thread.start()
        return future

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._queue.put(None)
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.idle_exit_s)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_items:
                try:
                    item = self._queue.get(timeout=self.max_wait_s)
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            live = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
            if live:
                self._execute(live)
            if stop:
                return

    def _execute(self, batch: list[tuple[Any, Future]]) -> None:
        try:
            results = self._run([item for item, _ in batch])
            self.batches_run += 1
        except Exception as error:  # noqa: BLE001 - a failing batch: retry one by one to isolate the culprit
            if len(batch) == 1:
                batch[0][1].set_exception(error)
                return
            logger.debug("batch of %d failed (%s); retrying requests one by one", len(batch), error)
            for pair in batch:
                self._execute([pair])
            return
        for (_, future), result in zip(batch, results):
            future.set_result(result)
