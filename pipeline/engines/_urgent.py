"""Worker threads that serve the most urgent job first (speech synthesis across sessions).

A FIFO pool makes a caller's first clause wait behind other callers' later clauses, which
only have to be ready before their reply's audio runs out. Here each job carries a ``due``
time — when its audio is needed: a reply's first clause is due when the reply began (its
caller is already waiting), a later clause when the audio before it will have been played —
and the workers start the pending job due soonest (*earliest deadline first*; ties: the older
job). The queue (:class:`UrgentQueue`) is plain data and never reads a clock: ``due`` values
only have to be on one scale (the event loop's clock); ``None`` is before every time, so a
caller that says nothing keeps its place in arrival order ahead of scheduled work.
:class:`UrgentThreads` runs it; of its workers, ``reserved`` only start a job once it is due
(by ``now()``, the clock the dues are on), so a first clause never waits behind the synthesis
of a tail that could have waited, however many tails are ahead of their playout; the others
leave a due job to a reserved worker that is free. ``ahead`` workers only start jobs not due
yet, at a lower OS priority (``ahead_nice``, Linux: a thread's own nice value): work done ahead
of its time then only takes the cores nobody's first words need — another caller's recognition,
prompt or first clause — and a job already due never runs at that priority.

Bounded: ``max_pending`` jobs may wait (not yet started); past it ``submit`` raises
:class:`~pipeline.errors.EngineError`. Cancelling a job's future before it starts takes it out
of the queue; a started job finishes in its thread and its result is dropped.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..errors import EngineError
from ._fair import _fail_all, _Job, _join, _settle

T = TypeVar("T")
J = TypeVar("J")

log = logging.getLogger("voice.engines")


class UrgentQueue(Generic[J]):
    """Pending jobs, popped due soonest first. Not thread-safe: the caller holds a lock."""

    def __init__(self, max_pending: int, engine: str = "tts") -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self.engine = engine
        self._heap: list[tuple[float, int, J]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float | None, job: J) -> None:
        """Queue ``job``, needed at ``due`` (``None``: at once, before any time); raises
        :class:`EngineError` when ``max_pending`` jobs are already waiting."""
        if len(self._heap) >= self.max_pending:
            raise EngineError(
                f"{self.engine} queue is full: {self.max_pending} jobs are waiting",
                engine=self.engine,
                retryable=True,
            )
        self._seq += 1
        heapq.heappush(self._heap, (float("-inf") if due is None else due, self._seq, job))

    def overdue(self, now: float) -> int:
        """Jobs waiting that were due at ``now`` or before (``None`` counts: due at once)."""
        return sum(1 for entry in self._heap if entry[0] <= now)

    def next_due(self) -> float | None:
        """The due time of the job :meth:`pop` would return; ``None`` when nothing waits."""
        return self._heap[0][0] if self._heap else None

    def pop(self) -> J | None:
        """The next job to start, or ``None`` when nothing waits."""
        return heapq.heappop(self._heap)[2] if self._heap else None

    def pop_after(self, time: float) -> J | None:
        """The job due soonest of those due after ``time``, or ``None`` when none is."""
        later = [i for i, entry in enumerate(self._heap) if entry[0] > time]
        if not later:
            return None
        i = min(later, key=lambda i: self._heap[i][:2])
        job = self._heap[i][2]
        self._heap[i] = self._heap[-1]
        self._heap.pop()
        heapq.heapify(self._heap)
        return job

    def remove(self, job: J) -> bool:
        """Take a job that has not started out of the queue; False when it is not there."""
        for i, entry in enumerate(self._heap):
            if entry[2] is job:
                self._heap[i] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return True
        return False


_ANY, _DUE, _AHEAD = "any", "due", "ahead"
"""A worker's role: it starts any job; only a job already due; only a job not due yet."""


class UrgentThreads:
    """Threads serving an :class:`UrgentQueue`, by the clock ``now()`` (default
    ``time.monotonic``: the event loop's clock, asyncio's and uvloop's alike): ``workers``
    threads at the process's priority, the last ``reserved`` of which only start a job already
    due, and ``ahead`` more that only start a job not due yet, ``ahead_nice`` nice levels lower
    (Linux only)."""

    def __init__(
        self,
        name: str,
        workers: int = 1,
        *,
        reserved: int = 0,
        ahead: int = 0,
        ahead_nice: int = 0,
        max_pending: int = 64,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        workers = max(1, workers)
        if not 0 <= reserved <= workers or ahead < 0:
            raise ValueError(f"{reserved} reserved of {workers} workers, {ahead} ahead")
        if reserved == workers and not ahead:
            raise ValueError(f"reserved must leave a worker for any job: {reserved} of {workers}")
        if not 0 <= ahead_nice <= 19:
            raise ValueError(f"ahead_nice must be 0 to 19, got {ahead_nice}")
        self.name = name
        self._queue: UrgentQueue[_Job] = UrgentQueue(max_pending, engine=name)
        self._lock = threading.Condition()
        self._closed = False
        self._now = now
        self._ahead_nice = ahead_nice
        self._free_reserved = 0  # reserved workers waiting for a job that is due
        roles = [_ANY] * (workers - reserved) + [_DUE] * reserved + [_AHEAD] * ahead
        self._threads = [
            threading.Thread(target=self._work, args=(role,), name=f"{name}-{i}", daemon=True)
            for i, role in enumerate(roles)
        ]
        for thread in self._threads:
            thread.start()

    def waiting(self) -> int:
        """Jobs waiting to start."""
        with self._lock:
            return len(self._queue)

    def overdue(self) -> int:
        """Jobs already due that wait to start: the pool is behind."""
        with self._lock:
            return self._queue.overdue(self._now())

    def submit(self, due: float | None, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)``, needed at ``due``; its result arrives in the returned future.
        Cancelling the future before the job starts removes the job. Raises
        :class:`EngineError` when the queue is full or the pool is shut down."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(self.name, lambda: fn(*args), loop, future)
        with self._lock:
            if self._closed:
                raise EngineError(f"{self.name} is shut down", engine=self.name)
            self._queue.push(due, job)
            self._lock.notify_all()  # a reserved worker may not take it
        future.add_done_callback(lambda f: self._withdraw(job) if f.cancelled() else None)
        return future

    async def run(self, due: float | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` once no job due sooner waits. Cancel-safe: a job that has not started
        is dropped; a started one finishes in its thread and its result is dropped."""
        return await self.submit(due, fn, *args)

    def shutdown(self, wait_s: float = 0.0) -> None:
        """Stop the workers after their current job, waiting up to ``wait_s`` for them; waiting
        jobs fail with EngineError."""
        with self._lock:
            self._closed = True
            dropped = list(iter(self._queue.pop, None))
            self._lock.notify_all()
        _fail_all(dropped, self.name)
        _join(self._threads, wait_s, self.name)

    def _withdraw(self, job: _Job) -> None:
        with self._lock:
            self._queue.remove(job)

    def _work(self, role: str) -> None:
        if role == _AHEAD and self._ahead_nice:
            _lower_priority(self._ahead_nice, self.name)
        while (job := self._next(role)) is not None:
            try:
                result, error = job.fn(), None
            except Exception as exc:  # delivered to the awaiting coroutine
                result, error = None, exc
            _settle(job, result, error)

    def _next(self, role: str) -> _Job | None:
        """The job this worker starts next; ``None`` once the pool is shut down. A worker for
        any job leaves one already due to a free reserved worker."""
        with self._lock:
            while not self._closed:
                due = self._queue.next_due()
                wait: float | None = None  # until a job comes (or another worker took one)
                if due is not None:
                    now = self._now()
                    if role == _AHEAD:  # the soonest of the jobs not due yet, if any
                        job = self._queue.pop_after(now)
                        if job is not None:
                            return job
                    elif (due <= now) if role == _DUE else (due > now or not self._free_reserved):
                        job = self._queue.pop()
                        if len(self._queue):
                            self._lock.notify_all()  # the next one may be for another worker
                        return job
                    elif role == _DUE:
                        wait = due - now  # until it is due
                if role == _DUE:
                    self._free_reserved += 1
                try:
                    self._lock.wait(timeout=wait)
                finally:
                    if role == _DUE:
                        self._free_reserved -= 1
            return None


def _lower_priority(nice: int, name: str) -> None:
    """Lower the calling thread's OS priority by ``nice`` (Linux keeps a nice value per thread;
    elsewhere it is the process's, so nothing is changed)."""
    if not sys.platform.startswith("linux"):
        log.debug("%s: thread priorities are per process here; ahead_nice ignored", name)
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:
        log.warning("%s: cannot lower a worker's priority: %s", name, exc)
