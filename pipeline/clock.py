"""Time, injectable: every timestamp in the pipeline comes from one :class:`Clock`.

The real clock reads the event loop's monotonic time; :class:`VirtualClock` lets tests run
turn-taking, pacing and timeouts instantly and exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return at ``deadline`` (at once when it has passed). Cancel-safe."""
        ...


class MonotonicClock:
    """The event loop's clock (``loop.time()``), the default everywhere."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        await asyncio.sleep(max(delay, 0.0))


class VirtualClock:
    """A clock that only moves when a test calls :meth:`advance`.

    ``sleep_until`` parks the caller on a future; ``advance`` wakes sleepers in deadline order,
    letting the loop run after each wake-up so that the woken tasks act at the right instant.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper due on the way."""
        target = self._now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not fut.done():
                fut.set_result(None)
            await settle()
        self._now = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until the loop has nothing left to do right now."""
    for _ in range(rounds):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def timeout(clock: Clock, seconds: float) -> AsyncIterator[None]:
    """``asyncio.timeout`` on ``clock``: raises :class:`TimeoutError` if the body has not
    finished ``seconds`` from now, so timeouts run on virtual time in tests. Cancel-safe."""
    if isinstance(clock, MonotonicClock):
        async with asyncio.timeout(seconds):
            yield
        return
    task = asyncio.current_task()
    assert task is not None
    expired = False

    async def expire() -> None:
        nonlocal expired
        await clock.sleep_until(clock.now() + seconds)
        expired = True  # runs only while the body is suspended: the cancel lands inside it
        task.cancel()

    watchdog = asyncio.get_running_loop().create_task(expire())
    try:
        yield
    except asyncio.CancelledError:
        if expired and task.uncancel() == 0:
            raise TimeoutError from None
        raise
    finally:
        watchdog.cancel()
