"""Drive the web client in Debian's Chromium with Playwright: a fake microphone that plays a WAV
file, the page at ``http://SERVER:PORT/``, and helpers to read what the page saw.

Used inside a network namespace (``tests/netns.py``) by ``tests/browser/scenarios.py`` and
``benchmarks/webrtc_latency.py``. Chromium is never downloaded: ``CHROMIUM`` is the system one.
"""

from __future__ import annotations

import base64
import os
import shutil
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from playwright.async_api import BrowserContext, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
MIC_RATE = 48_000
LOUD = 500
"""|sample| (PCM16) above which audio counts as sound."""


def write_mic_wav(path: Path, parts: Sequence[np.ndarray | float]) -> dict[str, list[float]]:
    """A fake-microphone file, 48 kHz 16-bit mono: each part is speech (int16 at 48 kHz) or
    seconds of silence. Returns when each speech part starts and ends (seconds into the file)."""
    chunks: list[np.ndarray] = []
    spans: list[list[float]] = []
    at = 0
    for part in parts:
        if isinstance(part, np.ndarray):
            spans.append([at / MIC_RATE, (at + len(part)) / MIC_RATE])
            chunks.append(part.astype(np.int16))
            at += len(part)
        else:
            n = round(part * MIC_RATE)
            chunks.append(np.zeros(n, np.int16))
            at += n
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(MIC_RATE)
        w.writeframes(np.concatenate(chunks).astype("<i2").tobytes())
    return {"speech_s": [s for s, _ in spans], "speech_end_s": [e for _, e in spans]}


def chromium_args(mic_wav: Path, origin: str) -> list[str]:
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        # %noloop: play the file once, then silence (Chromium loops it otherwise)
        f"--use-file-for-fake-audio-capture={mic_wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        # getUserMedia needs a secure context: http://10.99.0.1 is not one by default
        f"--unsafely-treat-insecure-origin-as-secure={origin}",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-proxy-server",
    ]


def _can_drop_sys_nice() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


async def launch(
    pw: Playwright,
    mic_wav: Path,
    origin: str,
    user_data_dir: Path,
    *,
    muted: bool = True,
    nice: int = 0,
) -> tuple[BrowserContext, Page]:
    """Chromium with a fresh profile and ``mic_wav`` as its microphone; one page. ``muted=False``
    plays the page's audio out (as through speakers): the echo canceller then has the agent's
    voice as its far-end reference (see below). ``nice``: Chromium runs at that niceness, every
    thread of it, without the right to raise its own priority (a benchmark's way to let the
    server on the same cores go first, as if the browser were on the caller's own machine)."""
    executable = CHROMIUM
    if nice:
        # Run as root, Chromium would undo the niceness: it sets its threads' own priorities
        # (nice 0, -8 for its audio and IO threads) and runs its audio threads SCHED_RR, ahead
        # of every server thread. Without CAP_SYS_NICE (and RLIMIT_RTPRIO 0) it cannot.
        keep_down = (
            "setpriv --inh-caps=-sys_nice --bounding-set=-sys_nice " if _can_drop_sys_nice() else ""
        )
        wrapper = user_data_dir.parent / f"{user_data_dir.name}-chromium.sh"
        wrapper.write_text(f'#!/bin/sh\nexec {keep_down}nice -n {int(nice)} {CHROMIUM} "$@"\n')
        wrapper.chmod(0o755)
        executable = str(wrapper)
    context = await pw.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=executable,
        headless=True,
        args=chromium_args(mic_wav, origin),
        ignore_default_args=[] if muted else ["--mute-audio"],
        # Playwright's --mute-audio stays: there is no loudspeaker, and with the agent's voice
        # audible the echo canceller (on by default, as in the page) gets it as its far-end
        # reference and, not having learnt yet that this fake mic carries no echo of it, holds
        # back the caller's cut-in for ~2 s of double talk. Muted, the page still plays, levels
        # and records the agent's voice exactly as before.
        viewport={"width": 1200, "height": 800},
    )
    page = context.pages[0] if context.pages else await context.new_page()
    return context, page


async def open_and_connect(
    page: Page, url: str, timeout_ms: float = 30_000, *, reload: bool = True
) -> None:
    """Open ``url`` (``reload=False``: it is open already, settings changed) and connect."""
    if reload:
        await page.goto(url)
    await page.wait_for_function("() => window.voiceClient !== undefined")
    await page.click("#connect")
    await page.wait_for_function(
        "() => voiceClient.state === 'connected' || voiceClient.state === 'disconnected'",
        timeout=timeout_ms,
    )
    if await page.evaluate("voiceClient.state") != "connected":
        raise RuntimeError(f"the page did not connect: {await page.inner_text('#errors')}")


POLL_MS = 50
"""How often :func:`wait_for` asks the page. Playwright's default polls on every animation frame,
which keeps a headless page rendering at 60 frames a second for as long as a wait lasts: the
benchmarks wait through whole conversations, and that rendering took CPU from the server on the
same two cores. The page's measurements are taken on its audio clock, not when it is polled."""


async def wait_for(page: Page, expression: str, timeout_s: float, arg: Any = None) -> Any:
    """``expression`` (a JS function of ``arg``) once truthy; its value."""
    handle = await page.wait_for_function(
        expression, arg=arg, timeout=timeout_s * 1000, polling=POLL_MS
    )
    return await handle.json_value()


async def agent_recording(page: Page) -> np.ndarray:
    """What the page recorded of the agent's voice (MediaRecorder), as int16 16 kHz mono."""
    rec = await page.evaluate("voiceClient.recording()")
    assert rec["sampleRate"] == 16_000
    return np.frombuffer(base64.b64decode(rec["pcm"]), dtype="<i2").astype(np.int16)


def trim_to_sound(audio: np.ndarray, rate: int = 16_000, pad_s: float = 0.3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > LOUD)
    if loud.size == 0:
        return audio[:0]
    pad = int(pad_s * rate)
    return audio[max(0, loud[0] - pad) : loud[-1] + pad]


async def page_state(page: Page) -> dict[str, Any]:
    """What the page shows and what ``window.voiceClient`` holds (audio levels excluded)."""
    return await page.evaluate(
        """() => {
          const texts = (sel) => [...document.querySelectorAll(sel)].map((n) => n.innerText);
          const c = window.voiceClient;
          return {
            state: c.state, transport: c.transport, events: c.events, eventLog: c.eventLog,
            turns: c.turns, latencies: c.latencies, bargeIns: c.bargeIns,
            localCandidates: c.localCandidates, connectedAt: c.connectedAt,
            jitterBufferTarget: c.jitterBufferTarget,
            agentMuted: document.getElementById('agent-audio').muted,
            t0: c.levels && c.levels.t0, callLocation: c.callLocation,
            user: texts('.msg.user .text'), agent: texts('.msg.agent .text'),
            interim: c.interim, userInterim: texts('.msg.user.interim .text'),
            agentMeta: texts('.msg.agent .meta'), cut: texts('.msg.agent .cut'),
            markers: [...document.querySelectorAll('.msg.agent .marker')]
              .map((n) => ({text: n.innerText, visible: n.checkVisibility()})),
            latencyPanel: document.getElementById('latency').innerText,
            errors: texts('#errors li'),
            sessionInfo: document.getElementById('session-info').innerText,
          };
        }"""
    )


async def levels(page: Page) -> dict[str, Any]:
    return await page.evaluate("voiceClient.levels")
