"""Shared fixtures: the real engines (loaded once), a running server, and caller speech made at
test time with espeak-ng (a voice other than the agent's Piper voice)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.audio import resample
from pipeline.engines import Engines
from voice.config import Config, load
from voice.engines import close_engines, load_engines, warm_up
from voice.server import VoiceServer

ARTIFACTS = Path(__file__).parent / "artifacts"


@functools.cache
def espeak(text: str, rate: int = 16_000, voice: str = "en-us+m3", wpm: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng, as int16 mono at ``rate``."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required (make test installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(path), text],
            check=True,
            timeout=60,
        )
        with wave.open(str(path)) as w:
            audio = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
            source_rate = w.getframerate()
    return resample(audio, source_rate, rate)


_DATA = tempfile.TemporaryDirectory(prefix="voice-test-data-")
"""The session store of every test server: a throw-away folder, never the checkout."""


def test_config() -> Config:
    return load(
        env={},
        overrides={
            "server.port": "0",
            "server.max_event_bytes": str(256 * 1024),
            "server.max_frame_bytes": str(1024 * 1024),
            "server.data_dir": _DATA.name,
            "sip.port": "0",  # (a free port: never the default 5060)
        },
    )


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    config = test_config()
    loaded = load_engines(config)
    warm_up(loaded.engines)
    yield loaded.engines
    close_engines(loaded.engines)


@pytest.fixture(scope="session")
async def server(engines: Engines) -> AsyncIterator[VoiceServer]:
    server = VoiceServer(test_config(), engines)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
