"""The web client over the OpenAI Realtime hand-off, run inside a private network namespace
(``tests/netns.py``) by ``test_browser_handoff.py``: the front server (this process, on
``SERVER_IP``, its own models fakes that are never asked) hands every session to a second
``voice serve`` process (the real models) on the namespace's loopback; Debian's Chromium opens the
web client on the front, and its fake microphone asks a question.

    python -m tests.browser.handoff_scenario OUT.json
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.async_api import Page, async_playwright

from tests.browser.page import MIC_RATE, agent_recording, open_and_connect, trim_to_sound
from tests.browser.page import wait_for as page_wait_for
from tests.browser.scenarios import LEAD_S, QUESTION, TAIL_S, TURN_TIMEOUT_S, Run
from tests.conftest import espeak, test_config
from tests.fakes import fake_engines
from tests.netns import SERVER_IP
from tests.test_handoff_e2e import Upstream
from voice.server import VoiceServer

log = logging.getLogger("tests.browser.handoff")
NEVER = "Never said by the front."
"""The front's own (fake) reply: it must not be heard, the upstream answers."""


async def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="browser-handoff-") as tmp:
        work = Path(tmp)
        upstream = Upstream(work)
        try:
            started = time.perf_counter()
            await upstream.start()  # loads the real models in its own process
            results["upstream_load_s"] = round(time.perf_counter() - started, 1)
            await _call(work, upstream, results)
        finally:
            await upstream.stop()
    return results


async def _call(work: Path, upstream: Upstream, results: dict[str, Any]) -> None:
    config = test_config()
    config.server.allow_unauthenticated = True  # the address exists only in this namespace
    config.handoff.engine = "openai-realtime"
    config.handoff.openai_url = upstream.url
    config.handoff.fallback = False
    config.handoff.first_audio_timeout_s = 60.0
    config.handoff.gap_timeout_s = 30.0
    front = VoiceServer(config, fake_engines(["never"], [NEVER]))
    await front.start(SERVER_IP, 0)
    try:
        async with async_playwright() as pw:
            run = Run(pw, front, work, "handoff")

            async def body(page: Page) -> None:
                await open_and_connect(page, f"{run.origin}/?record")
                await page_wait_for(  # (incomplete: the reply ran to the token limit)
                    page,
                    "() => voiceClient.turns.some((t) => ['completed', 'incomplete']"
                    ".includes(t.status))",
                    TURN_TIMEOUT_S,
                )
                # the final transcript of the caller's words may follow the reply's start
                await page_wait_for(
                    page, "() => document.querySelectorAll('.msg.user .text').length", 30
                )
                audio = await agent_recording(page)
                run.result["recorded_s"] = round(len(audio) / 16_000, 2)
                run.result["recorded_sound_s"] = round(len(trim_to_sound(audio)) / 16_000, 2)
                await run.hang_up(page)

            began = time.perf_counter()
            results["handoff"] = await run([LEAD_S, espeak(QUESTION, rate=MIC_RATE), TAIL_S], body)
            results["handoff"]["took_s"] = round(time.perf_counter() - began, 1)
    finally:
        await front.stop()
    try:
        results["upstream_items"] = await upstream.transcript()
    except Exception as exc:  # (reported, and the test says what is missing)
        results["upstream_error"] = f"{exc!r}\n{upstream.tail()}"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    Path(sys.argv[1]).write_text(json.dumps(asyncio.run(main()), indent=1))
