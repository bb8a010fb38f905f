"""Moving a blocking generator (of tokens, or of any items) onto the event loop, cancellably.

The generator runs in the engine's thread; its items cross to the loop through a queue. Closing or
cancelling the async iterator sets a flag the thread checks before each token, so generation
stops within one token. Waiting for the first token and for each next one is bounded by
timeouts; the queue holds at most ``max_tokens`` entries because that is all the generator makes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar, cast

from ..errors import EngineError, EngineTimeout
from ._threads import EngineThreads

_END = object()
T = TypeVar("T")


async def stream_from_thread(
    threads: EngineThreads,
    make: Callable[[], Iterator[T]],
    *,
    engine: str,
    first_timeout: float,
    next_timeout: float,
) -> AsyncIterator[T]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            for token in make():
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, token)
        except BaseException as exc:
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    future = threads.submit(work)
    timeout = first_timeout
    try:
        while True:
            try:
                async with asyncio.timeout(timeout):
                    item = await queue.get()
            except TimeoutError:
                raise EngineTimeout(
                    f"{engine}: no token within {timeout:.1f} s", engine=engine
                ) from None
            if item is _END:
                return
            if isinstance(item, EngineError):
                raise item
            if isinstance(item, BaseException):
                raise EngineError(f"{engine} failed: {item}", engine=engine) from item
            timeout = next_timeout
            yield cast(T, item)
    finally:
        stop.set()
        future.add_done_callback(_consume_exception)


def _consume_exception(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
