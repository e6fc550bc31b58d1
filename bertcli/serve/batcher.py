"""Dynamic batching: requests from concurrent clients share forward passes.

Request handlers ``await batcher.submit(job)``. One inference thread (off the event loop) takes
the oldest waiting job, waits up to ``max_wait_ms`` from its arrival for more, and closes the
batch as soon as the waiting jobs hold ``max_batch_tokens`` tokens; it then runs the model once
for all of them (the runtime sorts the texts by length into padded batches of at most that many
tokens) and hands each request its rows. Jobs are taken in arrival order, so none starves.

The queue is bounded in texts (``max_queue``): a job that does not fit raises :class:`QueueFull`
(the server answers 503 with ``Retry-After``). :meth:`close` lets the thread finish every job
already queued, then stops it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any


class QueueFull(Exception):
    pass


def _deliver(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():  # the client went away and the request was cancelled
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class Batcher:
    def __init__(self, run: Callable[[list], list], *, max_batch_tokens: int, max_wait_ms: float, max_queue: int,
                 on_batch: Callable[[int, int, int, float], None] | None = None):
        self._run = run
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._queue: deque = deque()
        self._cv = threading.Condition()
        self.queued_texts = 0
        self._queued_cost = 0
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="bertcli-inference", daemon=True)
        self._thread.start()

    async def submit(self, job) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cv:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if self._queue and self.queued_texts + job.texts > self.max_queue:
                raise QueueFull(f"the queue is full ({self.queued_texts} texts waiting, --max-queue {self.max_queue})")
            self._queue.append((job, fut, loop, time.perf_counter()))
            self.queued_texts += job.texts
            self._queued_cost += job.cost
            self._cv.notify()
        return await fut

    def _take(self) -> list | None:
        with self._cv:
            while not self._queue:
                if self._closing:
                    return None
                self._cv.wait()
            deadline = self._queue[0][3] + self.max_wait
            while self._queued_cost < self.max_batch_tokens and not self._closing:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cv.wait(left)
            taken, cost = [], 0
            while self._queue and (not taken or cost + self._queue[0][0].cost <= self.max_batch_tokens):
                item = self._queue.popleft()
                taken.append(item)
                cost += item[0].cost
                self.queued_texts -= item[0].texts
                self._queued_cost -= item[0].cost
            return taken

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            jobs = [t[0] for t in taken]
            start = time.perf_counter()
            try:
                results, error = self._run(jobs), None
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests
                results, error = [None] * len(jobs), exc
            seconds = time.perf_counter() - start
            if self._on_batch is not None and error is None:
                self._on_batch(len(jobs), sum(j.texts for j in jobs), sum(j.cost for j in jobs), seconds)
            for (_, fut, loop, _), result in zip(taken, results, strict=True):
                try:
                    loop.call_soon_threadsafe(_deliver, fut, result, error)
                except RuntimeError:  # the event loop is closed
                    pass

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued jobs, then stop the inference thread."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
