"""Browser scenarios, run inside a private network namespace (see ``tests/netns.py``) by
``test_browser.py``: the server in this process on ``SERVER_IP``, the web client in Debian's
Chromium (Playwright) with a fake microphone playing espeak-ng speech; observations go to JSON.

    python -m tests.browser.scenarios OUT.json [turn] [barge_in] [websocket]
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from playwright.async_api import Page, Playwright, async_playwright

from pipeline.engines import Engines
from tests.browser.page import (
    MIC_RATE,
    agent_recording,
    launch,
    levels,
    open_and_connect,
    page_state,
    trim_to_sound,
    wait_for,
    write_mic_wav,
)
from tests.conftest import ARTIFACTS, espeak, test_config
from tests.netns import SERVER_IP
from voice.engines import close_engines, load_engines, warm_up
from voice.server import VoiceServer

log = logging.getLogger("tests.browser")
QUESTION = "Who painted the Mona Lisa?"
STORY = "Please tell me a long story about a brave little dragon."
CUT_IN = "Stop, stop. Wait a moment, I have a question."
STORYTELLER = "You are a storyteller. Always tell long, detailed stories of many sentences."
LEAD_S = 3.0
"""Silence before the first question: the page connects meanwhile (the fake mic starts with
getUserMedia, before the call is up)."""
PAUSE_S = 8.0
"""Between the story request and the cut-in: long enough for the agent to be telling the story."""
TAIL_S = 60.0
TURN_TIMEOUT_S = 120.0

Scenario = Callable[[Playwright, VoiceServer, Engines, Path], Awaitable[dict[str, Any]]]


class _LogTail(logging.Handler):
    """The last lines the server logged while a scenario ran: kept in its result on failure."""

    def __init__(self, keep: int = 120) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=keep)
        self.setFormatter(logging.Formatter("%(relativeCreated)d %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record)[:300])


class Run:
    """One browser, one page, one fake-mic file; the page's state is kept even on failure."""

    def __init__(self, pw: Playwright, server: VoiceServer, work: Path, name: str) -> None:
        self.pw, self.server, self.work, self.name = pw, server, work, name
        self.origin = f"http://{SERVER_IP}:{server.port}"
        self.result: dict[str, Any] = {}

    async def __call__(
        self, parts: list[np.ndarray | float], body: Callable[[Page], Awaitable[None]]
    ) -> dict[str, Any]:
        wav = self.work / f"{self.name}.wav"
        self.result["mic"] = write_mic_wav(wav, parts)
        context, page = await launch(self.pw, wav, self.origin, self.work / f"profile-{self.name}")
        console: list[str] = []
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
        server_log = _LogTail()
        logging.getLogger().addHandler(server_log)
        try:
            await body(page)
        except Exception:
            self.result["error"] = traceback.format_exc()
            self.result["server_log"] = list(server_log.lines)
            log.exception("scenario %s failed", self.name)
        finally:
            logging.getLogger().removeHandler(server_log)
            try:
                self.result.setdefault("page", await page_state(page))
                self.result.setdefault("levels", await levels(page))
            except Exception as exc:  # the page itself is gone
                self.result.setdefault("page_error", repr(exc))
            self.result["console"] = console[-50:]
            await context.close()
        return self.result

    async def hang_up(self, page: Page) -> None:
        """Disconnect from the page; the server must end the call (POST …/hangup)."""
        (session,) = self.server.sessions.values()  # the page's: scenarios run one at a time
        await page.click("#disconnect")
        ended = await asyncio.wait_for(self.server.wait_ended(session.id), 15)
        self.result["ended_because"] = ended["closed_reason"]
        self.result["calls_after_hangup"] = len(self.server.calls)
        self.result["sessions_after_hangup"] = len(self.server.sessions)


async def _one_turn(
    pw: Playwright, server: VoiceServer, engines: Engines, work: Path, transport: str
) -> dict[str, Any]:
    name = "turn" if transport == "webrtc" else "websocket"
    run = Run(pw, server, work, name)

    async def body(page: Page) -> None:
        await open_and_connect(page, f"{run.origin}/?transport={transport}&record")
        await wait_for(
            page,
            "() => voiceClient.turns.some((t) => t.status === 'completed' && t.metrics)",
            TURN_TIMEOUT_S,
        )
        # the page's own latency: set as soon as the first reply sound was heard
        await wait_for(page, "() => voiceClient.turns.some((t) => t.pageLatencyMs !== null)", 10)
        run.result["page"] = await page_state(page)
        run.result["receiver"] = await page.evaluate("voiceClient.receiverStats()")
        audio = await agent_recording(page)
        speech = trim_to_sound(audio)
        run.result["recorded_s"] = round(len(audio) / 16_000, 2)
        run.result["recorded_sound_s"] = round(len(speech) / 16_000, 2)
        run.result["recorded_asr"] = await engines.asr.transcribe(speech)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = "browser-turn.png" if transport == "webrtc" else "browser-websocket.png"
        await page.screenshot(path=str(ARTIFACTS / shot))
        await run.hang_up(page)

    return await run([LEAD_S, espeak(QUESTION, rate=MIC_RATE), TAIL_S], body)


async def turn(pw: Playwright, server: VoiceServer, engines: Engines, work: Path) -> dict[str, Any]:
    return await _one_turn(pw, server, engines, work, "webrtc")


async def websocket(
    pw: Playwright, server: VoiceServer, engines: Engines, work: Path
) -> dict[str, Any]:
    """One turn over the WebSocket, with streaming ASR on (its words appear while spoken)."""
    server.config.pipeline.interim_asr_ms = 500
    try:
        return await _one_turn(pw, server, engines, work, "ws")
    finally:
        server.config.pipeline.interim_asr_ms = 0


async def barge_in(
    pw: Playwright, server: VoiceServer, engines: Engines, work: Path
) -> dict[str, Any]:
    run = Run(pw, server, work, "barge_in")

    async def body(page: Page) -> None:
        await open_and_connect(page, f"{run.origin}/")
        await wait_for(page, "() => voiceClient.events.includes('session.created')", 10)
        await page.fill("#instructions", STORYTELLER)
        await page.click("#apply")
        await wait_for(page, "() => voiceClient.events.includes('session.updated')", 10)
        run.result["instructions_applied_at"] = await page.evaluate(
            "performance.now() - voiceClient.levels.t0"
        )
        # the agent tells its story, the caller cuts in, the server flushes the agent's audio
        await wait_for(
            page, "() => voiceClient.events.includes('output_audio_buffer.cleared')", TURN_TIMEOUT_S
        )
        # … and answers the interruption, a response created after the flush
        await wait_for(
            page,
            """() => {
              const log = voiceClient.eventLog;
              const cut = log.findIndex((e) => e.type === 'output_audio_buffer.cleared');
              const next = log.slice(cut).find((e) => e.type === 'response.created');
              return next && log.some((e) => e.type === 'response.done'
                                             && e.response_id === next.response_id);
            }""",
            TURN_TIMEOUT_S,
        )
        run.result["page"] = await page_state(page)
        run.result["levels"] = await levels(page)
        run.result["analysis"] = analyse_barge_in(run.result["page"], run.result["levels"])
        # a page opened without ?record (as a caller's is) never recorded the agent's voice
        run.result["recording"] = await page.evaluate(
            "voiceClient.recording().then(() => 'recorded', (e) => e.message)"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "browser-barge-in.png"))
        await run.hang_up(page)

    parts: list[np.ndarray | float] = [LEAD_S, espeak(STORY, rate=MIC_RATE), PAUSE_S]
    parts += [espeak(CUT_IN, rate=MIC_RATE), TAIL_S]
    return await run(parts, body)


async def tab_closed(
    pw: Playwright, server: VoiceServer, engines: Engines, work: Path
) -> dict[str, Any]:
    """The tab is closed while the agent speaks: no hang-up, the server must notice by itself."""
    run = Run(pw, server, work, "tab_closed")

    async def body(page: Page) -> None:
        await open_and_connect(page, f"{run.origin}/")
        await wait_for(page, "() => voiceClient.events.includes('session.created')", 10)
        (session,) = server.sessions.values()
        await wait_for(
            page, "() => voiceClient.events.includes('output_audio_buffer.started')", TURN_TIMEOUT_S
        )
        await page.close()  # mid-reply, like a closed tab
        ended = await asyncio.wait_for(server.wait_ended(session.id), 60)
        run.result["ended_because"] = ended["closed_reason"]
        run.result["items"] = ended["items"]
        run.result["calls_after"] = len(server.calls)
        run.result["sessions_after"] = len(server.sessions)

    return await run([LEAD_S, espeak(STORY, rate=MIC_RATE), TAIL_S], body)


def analyse_barge_in(
    page: dict[str, Any], lv: dict[str, Any], cleared: dict[str, Any] | None = None
) -> dict[str, Any]:
    """From the page's level timelines (peak per ``stepMs``) and event times: when the caller cut
    in while the agent spoke, and when the agent's voice stopped. ``cleared``: the
    ``output_audio_buffer.cleared`` event of the interruption to look at (default the first)."""
    step, t0, loud = lv["stepMs"], lv["t0"], lv["loud"]
    mic = np.asarray(lv["mic"]) > loud
    agent = np.asarray(lv["agent"]) > loud
    events = page["eventLog"]
    at = lambda t: int((t - t0) // step)  # noqa: E731
    if cleared is None:
        cleared = next(e for e in events if e["type"] == "output_audio_buffer.cleared")
    rid = cleared["response_id"]
    started = next(
        e for e in events if e["type"] == "output_audio_buffer.started" and e["response_id"] == rid
    )
    heard = np.flatnonzero(agent[at(started["t"]) :])
    out: dict[str, Any] = {"response_id": rid, "step_ms": step}
    out["status"] = next(
        (e["status"] for e in events if e["type"] == "response.done" and e["response_id"] == rid),
        None,
    )
    if heard.size == 0:
        out["problem"] = "the interrupted response was never heard"
        return out
    agent_on = at(started["t"]) + int(heard[0])
    cut = np.flatnonzero(mic[agent_on:])
    if cut.size == 0:
        out["problem"] = "no caller speech after the agent began"
        return out
    cut_in = agent_on + int(cut[0])
    after = [
        e for e in events if e["type"] == "output_audio_buffer.started" and e["t"] > cleared["t"]
    ]
    end = at(after[0]["t"]) if after else len(agent)
    spoken = np.flatnonzero(agent[cut_in:end])
    stop = cut_in + (int(spoken[-1]) + 1 if spoken.size else 0)
    out.update(
        agent_heard_ms=agent_on * step,
        cut_in_ms=cut_in * step,
        agent_spoke_before_cut_in_ms=int(agent[agent_on:cut_in].sum()) * step,
        agent_speaking_at_cut_in=bool(agent[max(agent_on, cut_in - 1000 // step) : cut_in].any()),
        agent_stopped_ms=stop * step,
        stop_after_cut_in_ms=(stop - cut_in) * step,
        cleared_after_cut_in_ms=round(cleared["t"] - t0 - cut_in * step),
        next_reply_ms=end * step if after else None,
        quiet_until_next_reply_ms=(end - stop) * step,
    )
    return out


SCENARIOS: dict[str, Scenario] = {
    "turn": turn,
    "barge_in": barge_in,
    "websocket": websocket,
    "tab_closed": tab_closed,
}


async def main(names: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    loaded = load_engines(test_config())
    warm_up(loaded.engines)
    config = test_config()
    # the address exists only inside this test's own network namespace
    config.server.allow_unauthenticated = True
    server = VoiceServer(config, loaded.engines)
    await server.start(SERVER_IP, 0)
    results: dict[str, Any] = {"load_s": round(time.perf_counter() - started, 1)}
    try:
        with tempfile.TemporaryDirectory(prefix="browser-") as tmp:
            async with async_playwright() as pw:
                for name in names or list(SCENARIOS):
                    began = time.perf_counter()
                    log.info("scenario %s", name)
                    results[name] = await SCENARIOS[name](pw, server, loaded.engines, Path(tmp))
                    results[name]["took_s"] = round(time.perf_counter() - began, 1)
    finally:
        await server.stop()
        close_engines(loaded.engines)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    Path(sys.argv[1]).write_text(json.dumps(asyncio.run(main(sys.argv[2:])), indent=1))
