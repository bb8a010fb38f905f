"""sipp (Debian ``sip-tester``) as a test client: one scenario, one call, on loopback."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from .baresip import free_udp_port

SCENARIOS = Path(__file__).parent / "scenarios"


@dataclass(slots=True)
class SippRun:
    returncode: int
    output: str
    errors: str
    messages: str

    def explain(self) -> str:
        return (
            f"sipp exited {self.returncode}\n--- output\n{self.output[-3000:]}\n--- errors\n"
            f"{self.errors[-3000:]}\n--- messages\n{self.messages[-6000:]}"
        )


async def sipp(
    folder: Path,
    *args: str,
    scenario: str | None = None,
    limit_s: float = 60.0,
    port: int | None = None,
) -> SippRun:
    """Run ``sipp`` with ``args`` (and ``-sf scenario`` from ``tests/sip/scenarios``) for one
    call; its message trace and errors are kept in ``folder``."""
    if shutil.which("sipp") is None:
        pytest.fail("sipp is required (make test installs sip-tester)")
    command = [
        "sipp",
        *args,
        "-i",
        "127.0.0.1",
        "-p",
        str(port or free_udp_port()),
        "-mp",
        str(free_udp_port()),
        "-m",
        "1",
        "-l",
        "1",
        "-nostdin",
        "-timeout",
        f"{int(limit_s)}s",
        "-timeout_error",
        "-recv_timeout",
        "20000",
        "-trace_err",
        "-error_file",
        str(folder / "errors.log"),
        "-trace_msg",
        "-message_file",
        str(folder / "messages.log"),
    ]
    if scenario is not None:
        command += ["-sf", str(SCENARIOS / scenario)]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=folder,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(limit_s + 15):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()

    def read(name: str) -> str:
        path = folder / name
        return path.read_text(errors="replace") if path.exists() else ""

    return SippRun(
        process.returncode or 0,
        out.decode(errors="replace"),
        read("errors.log"),
        read("messages.log"),
    )
