"""Stopping tasks the structured way: cancel them all, then wait for each to finish."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has finished; their outcomes (cancellation, an
    error already reported elsewhere) are not raised. The caller's own cancellation still is."""
    pending = [t for t in tasks if t is not asyncio.current_task()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
