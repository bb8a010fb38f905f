"""Worker threads shared fairly between owners (sessions).

A FIFO pool lets one session's backlog (a long uploaded item, several items at once) delay every
other session's next transcription. Here each job carries its owner's key and the workers serve
owners by *start-time fair queuing*: a job's tag is ``max(V, the owner's previous tag + 1)``,
where ``V`` is the tag of the job started last, and the pending job with the smallest tag starts
next (ties: the older job). An owner that has been waiting gets ``V``, so it runs before any
backlog queued behind it: one owner's backlog delays another owner's next job by at most the
jobs already running. The queue (:class:`FairQueue`) is plain data; :class:`FairThreads` runs it.

Bounded: each owner may have ``max_pending`` jobs waiting (not yet started); past it ``submit``
raises :class:`~pipeline.errors.EngineError`. Cancelling a job's future before it starts takes it
out of the queue; a started job finishes in its thread and its result is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..errors import EngineError

log = logging.getLogger("voice.engines.fair")
T = TypeVar("T")
J = TypeVar("J")


class FairQueue(Generic[J]):
    """Pending jobs by owner, popped in start-time fair order. Not thread-safe: the caller
    holds a lock."""

    def __init__(self, max_pending: int, engine: str = "asr") -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self.engine = engine
        self._queues: dict[str, deque[tuple[int, int, J]]] = {}  # owner → (tag, seq, job)
        self._last_tag: dict[str, int] = {}
        self._virtual = 0
        self._seq = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def pending(self, owner: str) -> int:
        return len(self._queues.get(owner, ()))

    def push(self, owner: str, job: J) -> None:
        """Queue ``job``; raises :class:`EngineError` when ``owner`` already has
        ``max_pending`` jobs waiting."""
        if self.pending(owner) >= self.max_pending:
            raise EngineError(
                f"{self.engine} queue is full: {self.max_pending} jobs of this session are waiting",
                engine=self.engine,
                retryable=True,
            )
        previous = self._last_tag.get(owner)
        tag = self._virtual if previous is None else max(self._virtual, previous + 1)
        self._last_tag[owner] = tag
        self._seq += 1
        self._queues.setdefault(owner, deque()).append((tag, self._seq, job))

    def pop(self) -> J | None:
        """The next job to start, or ``None`` when nothing waits."""
        if not self._queues:
            return None
        owner = min(self._queues, key=lambda o: self._queues[o][0][:2])
        queue = self._queues[owner]
        tag, _, job = queue.popleft()
        if not queue:
            del self._queues[owner]
        self._virtual = max(self._virtual, tag)
        self._forget_idle()
        return job

    def remove(self, owner: str, job: J) -> bool:
        """Take a job that has not started out of the queue; False when it is not there."""
        queue = self._queues.get(owner)
        if queue is None:
            return False
        for entry in queue:
            if entry[2] is job:
                queue.remove(entry)
                if not queue:
                    del self._queues[owner]
                return True
        return False

    def _forget_idle(self) -> None:
        """Drop the tags of owners that wait for nothing and are not ahead of ``V`` (their next
        job would get ``V`` anyway), so the table does not grow with every session ever seen."""
        for owner in [o for o, t in self._last_tag.items() if o not in self._queues]:
            if self._last_tag[owner] < self._virtual:
                del self._last_tag[owner]


@dataclass(slots=True, eq=False)
class _Job:
    owner: str
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any] = field(repr=False)


class FairThreads:
    """``workers`` threads serving a :class:`FairQueue`."""

    def __init__(self, name: str, workers: int = 1, *, max_pending: int = 8) -> None:
        self.name = name
        self._queue: FairQueue[_Job] = FairQueue(max_pending, engine=name)
        self._lock = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def pending(self, owner: str) -> int:
        """Jobs of ``owner`` waiting to start."""
        with self._lock:
            return self._queue.pending(owner)

    def waiting(self) -> int:
        """Jobs of every owner waiting to start (a queue depth for the metrics)."""
        with self._lock:
            return len(self._queue)

    def submit(self, owner: str, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)`` for ``owner``; its result arrives in the returned future.
        Cancelling the future before the job starts removes the job. Raises
        :class:`EngineError` when ``owner`` has too many jobs waiting or the pool is shut down."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(owner, lambda: fn(*args), loop, future)
        with self._lock:
            if self._closed:
                raise EngineError(f"{self.name} is shut down", engine=self.name)
            self._queue.push(owner, job)
            self._lock.notify()
        future.add_done_callback(lambda f: self._withdraw(job) if f.cancelled() else None)
        return future

    async def run(self, owner: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in turn with the other owners' jobs. Cancel-safe: a job that has not
        started is dropped; a started one finishes in its thread and its result is dropped."""
        return await self.submit(owner, fn, *args)

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
            self._queue.remove(job.owner, job)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._closed and len(self._queue) == 0:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._queue.pop()
            if job is None:
                continue
            try:
                result, error = job.fn(), None
            except Exception as exc:  # delivered to the awaiting coroutine
                result, error = None, exc
            _settle(job, result, error)


def _join(threads: list[threading.Thread], wait_s: float, name: str) -> None:
    """Wait up to ``wait_s`` in all for ``threads`` to finish their job in progress (a worker
    still inside a model when the interpreter exits can crash it), logging any that do not."""
    deadline = time.monotonic() + wait_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) if wait_s > 0 else 0)
    if wait_s > 0 and (busy := [t.name for t in threads if t.is_alive()]):
        log.warning("%s: workers still busy after %.1f s: %s", name, wait_s, ", ".join(busy))


def _fail_all(jobs: list[_Job], name: str) -> None:
    """Jobs that never started, when their pool shuts down: each fails with EngineError."""
    for job in jobs:
        _settle(job, None, EngineError(f"{name} is shut down", engine=name))


def _settle(job: _Job, result: Any, error: Exception | None) -> None:
    def deliver() -> None:
        if job.future.done():  # cancelled meanwhile: the result is dropped
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(deliver)
    except RuntimeError:  # the loop is closed: nobody is waiting
        log.debug("%s: result of a job dropped, its event loop is closed", job.owner)
