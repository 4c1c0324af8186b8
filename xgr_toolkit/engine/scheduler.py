"""BatchScheduler: ``submit`` a request, get a future; a background thread batches and runs them.

Fixed-steps batching: the requests of one batch advance together through prefill and all L steps.
Batches form adaptively: an idle GPU takes what is queued at once (waiting at most ``max_wait_ms``
for company); while a batch runs, arriving requests gather (up to ``max_batch``) until it is nearly
done - one launch's host time before its expected end - since they could not start earlier anyway.
Launched then, the next batch's host work (padding, exclusion masks, pinned copies, the graph
launch) overlaps the running batch's last milliseconds and the GPU does not wait for it. With
``overlap``, batch i+1 is launched before batch i is collected, so batch i's post-processing
(SIDs to items) runs while the GPU computes.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from ..request import RecRequest

if TYPE_CHECKING:
    from .gr_engine import GREngine, LaunchedBatch

__all__ = ["BatchScheduler"]


class BatchScheduler:
    def __init__(self, engine: GREngine, max_batch: int, max_wait_ms: float, overlap: bool = True):
        self.engine, self.max_batch, self.max_wait, self.overlap = engine, max_batch, max_wait_ms / 1000, overlap
        self._queue: queue.Queue[tuple[RecRequest, Future] | None] = queue.Queue()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="xgr-scheduler", daemon=True)
        self._thread.start()

    def submit(self, request: RecRequest) -> Future:
        future: Future = Future()
        self._queue.put((request, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    POLL_S = 0.0002  # how often a gathering scheduler looks at the running batch

    def _gather(self, running: LaunchedBatch | None) -> list[tuple[RecRequest, Future]]:
        """The next batch: on an idle GPU, the first request and its company; on a busy one, what
        arrives until the running batch is nearly done (see the module's docstring). Sets ``_closing``
        when close() was called."""
        batch: list[tuple[RecRequest, Future]] = []
        deadline = None
        if running is None:
            first = self._queue.get()
            if first is None:
                self._closing = True
                return batch
            batch.append(first)
            deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            busy = running is not None and not running.ready() \
                and time.perf_counter() < running.expected_done - self.engine.launch_seconds
            wait = self.POLL_S if busy else (deadline - time.monotonic() if deadline else 0.0)
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                if busy:
                    continue
                break
            if item is None:
                self._closing = True
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        running: tuple[LaunchedBatch, list[Future]] | None = None
        while not self._closing or running is not None:
            batch = [] if self._closing else self._gather(running[0] if running else None)
            launched = None
            if batch:
                try:
                    launched = (self.engine.launch([r for r, _ in batch]), [f for _, f in batch])
                except Exception as err:  # a bad batch fails its own futures, never the loop
                    for _, f in batch:
                        f.set_exception(err)
            if running is not None:
                self._resolve(*running)
                running = None
            if launched is not None:
                if self.overlap:
                    running = launched
                else:
                    self._resolve(*launched)

    @staticmethod
    def _resolve(launched: LaunchedBatch, futures: list[Future]) -> None:
        try:
            for future, items in zip(futures, launched.result()):
                future.set_result(items)
        except Exception as err:
            for f in futures:
                f.set_exception(err)
