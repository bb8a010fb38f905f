"""A real softphone for the tests: baresip (Debian), driven over its TCP control socket
(:mod:`benchmarks.harness.softphone`, which the benchmark's baresip caller uses too); here a
missing baresip fails the test instead of skipping it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import softphone
from benchmarks.harness.softphone import MODULES, free_port, free_udp_port, read_wav, write_wav

__all__ = ["MODULES", "Baresip", "free_port", "free_udp_port", "read_wav", "write_wav"]


class Baresip(softphone.Baresip):
    """One baresip process: ``async with Baresip(tmp, microphone) as phone: await phone.dial()``."""

    def __init__(
        self,
        folder: Path,
        microphone: np.ndarray,
        *,
        record: bool = True,
        codecs: str = "PCMU,PCMA",
        rate: int = 8000,
    ) -> None:
        if not softphone.installed():
            pytest.fail("baresip is required (make test installs it)")
        super().__init__(folder, microphone, record=record, codecs=codecs, rate=rate)

    async def wait_for(self, predicate: Callable[[], object], within: float, what: str) -> None:
        """Until ``predicate()`` (of :attr:`events`) holds, as events come in."""
        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(
                f"baresip: no {what} within {within} s; events {self.events[-10:]};"
                f" log tail {''.join(self.output)[-2000:]}"
            ) from None
