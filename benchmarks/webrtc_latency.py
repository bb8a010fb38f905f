"""Voice-to-voice latency over WebRTC, measured in a real browser, beside the WebSocket figure
from the same run.

The web client runs in Debian's Chromium (Playwright) with a fake microphone that plays one WAV
file: K questions spoken by espeak-ng (the harness's ``scenarios.questions``, as in
``realtime_latency``), separated by pauses long enough for each answer. The page measures each
turn itself: from the mic's last sample with speech (peak above 0.015 ≈ 500 in PCM16) to the
first sample of the agent's voice played, both read on the audio thread per render quantum
(2.7 ms) and timed on the audio clock (``web_client/levels.js``). The server's own stage
breakdown (``x.voice.turn.metrics``; the web client asks for it) is kept beside it. The same
questions go through ``/v1/realtime`` over a WebSocket with the harness's caller through the
``openai`` SDK, as in ``realtime_latency`` (last audible chunk sent → first audible delta
received), interleaved with the page's: WebSocket question k is asked in the pause after the
page's question k, once the page's reply is over, while the same browser is open and its call
up, so both callers meet the same load.

Both run against one in-process server inside a private network namespace
(``tests/netns.py``: WebRTC's ICE needs a real interface, loopback does not do). What the run
recorded is read in ``webrtc_latency_analysis.py`` (the page's turns, the pairs, the cut-ins).

    python -m benchmarks.webrtc_latency [--turns K] [--pause S] [--barge-ins N] [--out DIR]

Needs ``unshare``/``ip`` with user namespaces, ``espeak-ng``, ``/usr/bin/chromium`` and the
``playwright`` Python package (``pip install -e '.[test]'``; no ``playwright install``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.harness import audio
from benchmarks.harness.clients import REALTIME_RATE, open_sdk_call
from benchmarks.harness.machine import machine_info
from benchmarks.harness.report import RESULTS, write_json
from benchmarks.harness.runner import Timing, run_conversation
from benchmarks.harness.scenarios import QUESTIONS_VOICE, RenderedScenario, Renderer, questions
from benchmarks.harness.stats import summarize
from benchmarks.harness.table import fmt
from benchmarks.harness.timeline import REALTIME
from benchmarks.realtime_latency import METRICS_GRACE_S, TURN_BUDGET_S, TURN_TIMEOUT_S
from benchmarks.webrtc_latency_analysis import (
    barge_in_summary,
    cut_in_outcomes,
    paired,
    webrtc_summary,
    webrtc_turns,
)

NAME = "webrtc_latency"
LEAD_S = 3.0
"""Silence before the first question: the page connects meanwhile."""
DEFAULT_PAUSE_S = 40.0
"""After each question: the page's reply, then the WebSocket caller's turn (question and
reply), must fit before the next question."""
LOUD = 0.015
REPLY_TOKENS = 40
"""The server's ``llm.max_tokens`` here (unless ``--set``): a reply of ~10 s, so that each
caller's reply is over before the other caller's question, which then meets a server busy with
nobody's reply (the bundled model's 120-token replies run ~30 s, into the next questions)."""
CLEAR_S = 2.0
"""The WebSocket caller's reply still going this long before the page's next question is
cancelled: each caller's question meets a server that is not busy with the other's reply."""
log = logging.getLogger("benchmarks.webrtc_latency")
BROWSER_NICE = 0
"""Chromium's niceness (``--browser-nice``)."""

if TYPE_CHECKING:
    from playwright.async_api import Page


# ---------------------------------------------------------------- inside the namespace


async def browser_session(
    origin: str,
    asked: RenderedScenario,
    pause_s: float,
    work: Path,
    between: Callable[[Page, dict[str, Any]], Coroutine[Any, Any, list[dict[str, Any]]]],
    raw_mic: bool = False,
) -> dict[str, Any]:
    """One page, one WebRTC call, all the questions (rendered at the mic's rate); what the page
    measured, and what ``between(page, mic_script)`` (run while the call is up) returned.
    ``raw_mic``: the page's noise suppression and automatic gain unticked."""
    from playwright.async_api import async_playwright

    from tests.browser.page import launch, page_state, wait_for, write_mic_wav

    parts: list[np.ndarray | float] = [LEAD_S]
    for turn in asked.turns:
        parts += [*turn.segments, pause_s]
    wav = work / "questions.wav"
    script = write_mic_wav(wav, parts)
    last_end_ms = script["speech_end_s"][-1] * 1000
    async with async_playwright() as pw:
        context, page = await launch(pw, wav, origin, work / "profile", nice=BROWSER_NICE)
        try:
            await open_unticked(page, origin, RAW_MIC if raw_mic else [])
            interleaved = asyncio.create_task(between(page, script))
            # the file has been played up to the end of the last question…
            await wait_for(
                page,
                "(end) => performance.now() - voiceClient.levels.t0 > end + 1000",
                last_end_ms / 1000 + 120,
                last_end_ms,
            )
            # …and every reply is finished and measured: one per question, or as many as came
            # by the end of the file (a question the server did not answer is not waited for)
            await wait_for(
                page,
                """([n, late]) => {
                     const turns = voiceClient.turns;
                     const now = performance.now() - voiceClient.levels.t0;
                     return turns.length > 0 && (turns.length >= n || now > late)
                       && turns.every((t) => t.status !== 'in_progress' && t.metrics);
                   }""",
                pause_s + 120,
                [len(asked.turns), last_end_ms + pause_s * 1000],
            )
            state = await page_state(page)
            state["receiver"] = await page.evaluate("voiceClient.receiverStats()")
            other = await interleaved
            await page.click("#disconnect")
        finally:
            await context.close()
    return {"mic": script, "page": state, "between": other}


STORYTELLER = "You are a storyteller. Always tell long, detailed stories of many sentences."
CUT_INS = (
    "Please tell me a long story about a brave little dragon.",
    "Stop, stop. Tell me a long story about a clever fox instead.",
    "Wait, wait. Now tell me a long story about an old lighthouse keeper.",
    "Stop there. Tell me a long story about a small robot on the moon.",
    "Hold on. Tell me a long story about a girl who sails around the world.",
    "Stop, please. Tell me a long story about a bear who learns to sing.",
    "No, wait. Tell me a long story about a knight who is afraid of the dark.",
    "Okay, stop. Tell me a long story about a whale who wants to fly.",
    "Enough. Tell me a long story about a baker in a tiny village.",
    "Hey, stop. Tell me a long story about a cat who becomes a detective.",
    "Sorry, wait. Tell me a long story about two friends lost in a forest.",
)
"""The first asks for a story; each next one cuts the story being told short and asks another."""
SPEAKERS = ("muted", "aec", "no-aec")
BARGE_PAUSE_S = 6.0
"""After each request: the agent is telling the story when the next cuts in (~5 s into it). The
stories run 4-8 s, so some have ended by then (``cut_ins``: ``story_over``, which is what the
cut-ins that "did not interrupt" were). Shorter pauses (3 s) made the next reply's first sound
reach the page before its ``output_audio_buffer.started`` event, and the analysis then ran the
story on to the next reply: not used until that is understood."""


async def barge_in_session(
    origin: str,
    cut_ins: list[np.ndarray],
    pause_s: float,
    work: Path,
    speakers: str,
    raw_mic: bool = False,
) -> dict[str, Any]:
    """One page, one WebRTC call: a story asked for, then each cut-in spoken over the agent's
    story; the page's event log and its mic/agent level timelines, and each interruption's
    analysis (``tests.browser.scenarios.analyse_barge_in``). ``speakers``: ``muted`` (the page
    plays into a muted output, as in the tests), ``aec`` (played out, the page's echo
    cancellation on: its default), ``no-aec`` (played out, the box unticked). ``raw_mic``: the
    page's noise suppression and automatic gain unticked."""
    from playwright.async_api import async_playwright

    from tests.browser.page import launch, levels, page_state, wait_for, write_mic_wav
    from tests.browser.scenarios import analyse_barge_in

    parts: list[np.ndarray | float] = [LEAD_S]
    for speech in cut_ins:
        parts += [speech, pause_s]
    wav = work / "barge_in.wav"
    script = write_mic_wav(wav, parts)
    last_end_ms = script["speech_end_s"][-1] * 1000
    async with async_playwright() as pw:
        muted = speakers == "muted"
        context, page = await launch(
            pw, wav, origin, work / "profile-barge-in", muted=muted, nice=BROWSER_NICE
        )
        try:
            await connect_storyteller(page, origin, speakers, raw_mic)
            await wait_for(
                page,
                "(end) => performance.now() - voiceClient.levels.t0 > end + 1000",
                last_end_ms / 1000 + 120,
                last_end_ms,
            )
            await wait_for(
                page,
                "() => voiceClient.turns.every((t) => t.status !== 'in_progress')",
                pause_s + 120,
            )
            state, lv = await page_state(page), await levels(page)
            receiver = await page.evaluate("voiceClient.receiverStats()")
            await page.click("#disconnect")
        finally:
            await context.close()
    log = state["eventLog"]
    cleared = [e for e in log if e["type"] == "output_audio_buffer.cleared"]
    return {
        # the server held the agent (the page muted it) and let it go on: a hold that was not
        # an interruption (an echo, a noise) costs the page what its jitter buffer held
        "holds": sum(e["type"] == "x.voice.output_audio.held" for e in log),
        "resumed_holds": sum(e["type"] == "x.voice.output_audio.resumed" for e in log),
        "mic": script,
        "responses": len(state["turns"]),
        "turns": [
            {k: t.get(k) for k in ("response_id", "status", "pageLatencyMs")}
            for t in state["turns"]
        ],
        "user_transcripts": state["user"],
        "barge_ins_on_page": state["bargeIns"],
        "errors": state["errors"],
        "interruptions": [analyse_barge_in(state, lv, e) for e in cleared],
        "cut_ins": cut_in_outcomes(state, lv),
        "receiver": receiver,
    }


RAW_MIC = ["#noise-suppression", "#auto-gain"]
"""The page's boxes that ``--raw-mic`` unticks."""


async def open_unticked(page: Any, origin: str, unticked: list[str]) -> None:
    """The page opened with these microphone boxes unticked, and its call up."""
    from tests.browser.page import open_and_connect

    if unticked:
        await page.goto(f"{origin}/")
        for box in unticked:
            await page.uncheck(box)
    await open_and_connect(page, f"{origin}/", reload=not unticked)


async def connect_storyteller(page: Any, origin: str, speakers: str, raw_mic: bool) -> None:
    """The page's microphone boxes as asked (``no-aec``: echo cancellation unticked;
    ``raw_mic``: noise suppression and automatic gain unticked), the call up, and the session's
    instructions those of a storyteller."""
    from tests.browser.page import wait_for

    unticked = ["#echo-cancellation"] if speakers == "no-aec" else []
    await open_unticked(page, origin, unticked + (RAW_MIC if raw_mic else []))
    await wait_for(page, "() => voiceClient.events.includes('session.created')", 10)
    await page.fill("#instructions", STORYTELLER)
    await page.click("#apply")
    await wait_for(page, "() => voiceClient.events.includes('session.updated')", 10)


PAGE_TIME = "performance.now() - voiceClient.levels.t0"


async def websocket_between(
    page: Page, url: str, asked: RenderedScenario, mic: dict[str, Any], pause_s: float
) -> list[dict[str, Any]]:
    """The same questions through ``/v1/realtime``, one session through the ``openai`` SDK,
    question k in the pause after the page's question k: once the page's reply to it is over
    (or 0.4 ``pause_s`` after the question, if it never is), its own reply cancelled if still
    going ``CLEAR_S`` before the page's next question. Each record says where in the page's
    timeline it ran (``page_ms``), whether the page's reply was over when it began
    (``after_page_reply``), whether it was cut for the page's next question
    (``cut_for_page_question``) and whether it ran into it all the same."""
    from tests.browser.page import wait_for

    timing = Timing(turn_timeout_s=TURN_TIMEOUT_S, metrics_grace_s=METRICS_GRACE_S)
    ends = [e * 1000 for e in mic["speech_end_s"]]
    starts = [s * 1000 for s in mic["speech_s"]]
    deadline = time.perf_counter() + LEAD_S + len(ends) * (pause_s + 10 + TURN_BUDGET_S)
    spans: list[list[float]] = []
    over: list[bool] = []
    cut: set[int] = set()
    calls: list[Any] = []
    clear: asyncio.Task[None] | None = None

    def opener(protocol: str, to: str) -> Any:
        call = open_sdk_call(protocol, to)
        calls.append(call)
        return call

    async def clear_for(k: int) -> None:
        """Cancel turn ``k``'s reply if it is still going ``CLEAR_S`` before question k + 1."""
        wait_ms = starts[k + 1] - CLEAR_S * 1000 - await page.evaluate(PAGE_TIME)
        await asyncio.sleep(max(0.0, wait_ms / 1000))
        if len(spans) == k + 1 and len(spans[k]) == 1:  # turn k is not over
            cut.add(k)
            await calls[-1].cancel_reply()

    async def before_turn(k: int) -> None:
        nonlocal clear
        if clear is not None:
            clear.cancel()
        if spans:
            spans[-1].append(await page.evaluate(PAGE_TIME))
        how = await wait_for(
            page,
            f"""([k, end, late]) => {{
                const now = {PAGE_TIME}, t = voiceClient.turns[k];
                if (now > end && t && t.status !== 'in_progress' && t.metrics) return 'over';
                return now > late ? 'late' : false;
            }}""",
            ends[k] / 1000 + pause_s + 120,
            [k, ends[k] + 500, ends[k] + pause_s * 400],
        )
        over.append(how == "over")
        spans.append([await page.evaluate(PAGE_TIME)])
        if k + 1 < len(starts):
            clear = asyncio.create_task(clear_for(k))

    try:
        records, _ = await run_conversation(
            REALTIME,
            url,
            asked,
            timing,
            deadline,
            lambda rec: None,
            {},
            opener=opener,
            before_turn=before_turn,
        )
    finally:
        if clear is not None:
            clear.cancel()
    if spans and len(spans[-1]) == 1:
        spans[-1].append(await page.evaluate(PAGE_TIME))
    for k, (rec, span) in enumerate(zip(records, spans, strict=False)):
        rec["page_ms"] = [round(x) for x in span]
        rec["after_page_reply"] = over[k]
        rec["cut_for_page_question"] = k in cut
        rec["overlapped_page_question"] = k + 1 < len(starts) and span[-1] > starts[k + 1]
    return records


def server_overrides(speakers: str, settings: list[str]) -> dict[str, str]:
    """The benchmark's server settings, then ``--set``'s."""
    # the address exists only inside the benchmark's own network namespace
    overrides = {
        "server.port": "0",
        "server.allow_unauthenticated": "true",
        "llm.max_tokens": str(REPLY_TOKENS),
    }
    if speakers == "no-aec":  # the server cancels the echo the page no longer does
        overrides["webrtc.echo_cancellation"] = "true"
    overrides.update(setting.split("=", 1) for setting in settings)
    return overrides


def questions_report(
    texts: list[str], session: dict[str, Any], took_s: float
) -> dict[str, dict[str, Any]]:
    """The questions' part of the report: the page's turns, the WebSocket caller's, the pairs."""
    page, records = session["page"], session["between"]
    rtc = webrtc_turns(texts, page)
    return {
        "webrtc": {
            "took_s": round(took_s, 1),
            "summary": webrtc_summary(rtc, len(texts)),
            "turns": rtc,
            "user_transcripts": page["user"],
            "errors": page["errors"],
            "local_candidates": page["localCandidates"],
            "jitter_buffer_target_ms": page.get("jitterBufferTarget"),
            "receiver": page["receiver"],
        },
        "websocket": {
            "interleaved": "each question in the pause after the page's, its call up",
            "summary": summarize(records, REALTIME),
            "overlapped_page_question": sum(r["overlapped_page_question"] for r in records),
            "cut_for_page_question": sum(r["cut_for_page_question"] for r in records),
            "before_page_reply_over": sum(not r["after_page_reply"] for r in records),
            "turns": records,
        },
        "page_minus_websocket": paired(rtc, records),
    }


async def inside(
    turns: int,
    pause_s: float,
    barge_ins: int,
    speakers: str,
    settings: list[str],
    raw_mic: bool = False,
) -> dict[str, Any]:
    from tests.browser.page import MIC_RATE
    from tests.conftest import espeak
    from tests.netns import SERVER_IP
    from voice.config import load
    from voice.engines import close_engines, load_engines, warm_up
    from voice.server import VoiceServer

    config = load(overrides=server_overrides(speakers, settings))
    loaded = load_engines(config)
    warm_up(loaded.engines, config.pipeline.instructions)  # as the server does
    server = VoiceServer(config, loaded.engines)
    port = await server.start(SERVER_IP, 0)
    report: dict[str, Any] = {}
    script = questions(turns)
    texts = [t.text for t in script.turns]
    try:
        with tempfile.TemporaryDirectory(prefix="webrtc-latency-") as tmp:
            print(f"WebRTC: {turns} questions in one page session, WebSocket between ...")
            began = time.perf_counter()
            asked = Renderer(MIC_RATE).render(script)
            on_ws = Renderer(REALTIME_RATE).render(script)
            url = f"ws://{SERVER_IP}:{port}/v1/realtime"
            session = await browser_session(
                f"http://{SERVER_IP}:{port}",
                asked,
                pause_s,
                Path(tmp),
                lambda page, mic: websocket_between(page, url, on_ws, mic, pause_s),
                raw_mic,
            )
            report.update(questions_report(texts, session, time.perf_counter() - began))
        if barge_ins:
            print(f"Barge-in: {barge_ins} cut-ins over the agent's stories ...", flush=True)
            began = time.perf_counter()
            said = [espeak(text, rate=MIC_RATE) for text in CUT_INS[: barge_ins + 1]]
            with tempfile.TemporaryDirectory(prefix="webrtc-barge-in-") as tmp:
                cut = await barge_in_session(
                    f"http://{SERVER_IP}:{port}",
                    said,
                    BARGE_PAUSE_S,
                    Path(tmp),
                    speakers,
                    raw_mic,
                )
            report["barge_in"] = {
                "took_s": round(time.perf_counter() - began, 1),
                "summary": barge_in_summary(cut, barge_ins),
                **cut,
            }
    finally:
        await server.stop()
        close_engines(loaded.engines)
    return report


# ---------------------------------------------------------------- on the host


def chromium_version() -> str:
    from tests.browser.page import CHROMIUM

    try:
        text = subprocess.run(
            [CHROMIUM, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return next((line.strip() for line in text.splitlines() if "Chromium" in line), "unknown")


def _line(name: str, stats: dict[str, Any]) -> str:
    p50, p95, top = (fmt(stats.get(k)).rjust(5) for k in ("p50", "p95", "max"))
    return f"  {name:<54} p50 {p50}  p95 {p95}  max {top}"


def print_summary(report: dict[str, Any]) -> None:
    for t in report["webrtc"]["turns"]:
        server = t["stages_ms"].get("first_audio_sent")
        print(
            f"WebRTC turn {t['index'] + 1}: page {fmt(t['page_voice_to_voice_ms'])} ms,"
            f" server {fmt(server)} ms ({t['status']})  heard: {t['user_transcript']!r}"
        )
    m = report["machine"]
    print("\n== voice-to-voice latency: WebRTC in Chromium, beside the WebSocket ==")
    print(f"machine: {m['cpu']}, {m['usable_cores']}/{m['cores']} cores usable, {m['platform']},")
    print(f"         Python {m['python']}, {report['settings']['chromium']}")
    _print_webrtc(report["webrtc"])
    _print_websocket(report["websocket"])
    pm = report.get("page_minus_websocket")
    if pm:  # (runs before 2026-12-02 have none)
        _print_pairs(pm)
    if "barge_in" in report:
        _print_barge_in(report["barge_in"]["summary"])


def _print_webrtc(webrtc: dict[str, Any]) -> None:
    rtc = webrtc["summary"]
    cut = rtc["cut_by_next_question"]
    print(f"WebRTC ({rtc['measured']}/{rtc['questions']} turns measured, {cut} cut by the next):")
    print(_line("page: last speech frame sent -> first agent sound", rtc["page_voice_to_voice_ms"]))
    print(_line("server: first_audio_sent", rtc["stages_ms"]["first_audio_sent"]))
    print(_line("page uplink: last speech -> the server's end of speech", rtc["page_uplink_ms"]))
    print(_line("page downlink: output_audio_buffer.started -> sound", rtc["page_downlink_ms"]))
    r = webrtc.get("receiver") or {}
    print(
        "  Chromium's jitter buffer for the agent's track (mean per sample): delay"
        f" {fmt(r.get('jitterBufferDelayMs'))} ms, target {fmt(r.get('jitterBufferTargetDelayMs'))}"
        f" ms, minimum {fmt(r.get('jitterBufferMinimumDelayMs'))} ms; audio per packet: the"
        f" agent's {fmt(r.get('receivedPacketMs'))} ms, the page's {fmt(r.get('sentPacketMs'))} ms"
    )


def _print_websocket(between: dict[str, Any]) -> None:
    ws = between["summary"]
    cleared = between.get("cut_for_page_question")
    print(
        f"WebSocket ({ws['turns'] - ws['missed']}/{ws['turns']} turns measured"
        + (f", {cleared} cut {CLEAR_S:g} s before the page's next question" if cleared else "")
        + f", {between['overlapped_page_question']} ran into it):"
    )
    print(_line("client: last speech chunk sent -> first audible delta", ws["voice_to_voice_ms"]))
    print(_line("server: first_audio_sent", ws["stages_ms"].get("first_audio_sent", {})))


def _print_pairs(pm: dict[str, Any]) -> None:
    stages = ", ".join(
        f"{name} {fmt(pm['stages_ms'][name]['p50'])}"
        for name in ("turn_end", "asr_done", "llm_first_token", "first_audio_sent")
        if name in pm["stages_ms"]
    )
    left = pm.get("left_out") or []
    print(
        f"Page - WebSocket, question by question ({pm['questions']} pairs"
        + (f"; left out, one met the other's reply: {[k + 1 for k in left]}" if left else "")
        + "):"
    )
    print(_line("voice-to-voice", pm["voice_to_voice_ms"]))
    if "outside_server_ms" in pm:  # (runs before 2026-12-03 afternoon have none)
        print(_line("outside the server (v2v - first_audio_sent)", pm["outside_server_ms"]))
    print(f"  the server's stages, p50: {stages}")


def _print_barge_in(b: dict[str, Any]) -> None:
    print(f"Barge-in ({b['measured']}/{b['cut_ins']} cut-ins measured, {b['step_ms']} ms steps):")
    print(f"  cut-ins: {b['outcomes']}")
    print(f"  agent held {b['holds']} times, {b['resumed_holds']} resumed (not a cut-in)")
    stopped = b["agent_audibly_stopped_after_cut_in_ms"]
    print(_line("page: caller's speech -> agent audibly stops", stopped))
    cleared = b["server_cleared_after_cut_in_ms"]
    print(_line("page: caller's speech -> output_audio_buffer.cleared", cleared))


def host(args: argparse.Namespace) -> int:
    from tests import netns
    from tests.browser.page import CHROMIUM

    for tool, hint in (
        ("espeak-ng", "apt-get install espeak-ng"),
        (CHROMIUM, "apt-get install chromium"),
    ):
        if shutil.which(tool) is None:
            print(f"{tool} is needed ({hint})")
            return 2
    reason = netns.available()
    if reason is not None:
        print(f"cannot run: {reason}")
        return 2
    started = datetime.now(UTC).isoformat(timespec="seconds")
    per_turn = 5 + args.pause
    budget = 300 + args.turns * (per_turn + 60) + args.barge_ins * (BARGE_PAUSE_S + 30)
    with tempfile.TemporaryDirectory(prefix="webrtc-latency-") as tmp:
        out = Path(tmp) / "inside.json"
        inner = ["--inside", "--turns", str(args.turns), "--pause", str(args.pause)]
        inner += ["--barge-ins", str(args.barge_ins), "--speakers", args.speakers]
        inner += [f"--set={setting}" for setting in args.set]
        inner += ["--raw-mic"] if args.raw_mic else []
        inner += ["--browser-nice", str(args.browser_nice)]
        try:
            measured = netns.run_scenarios(f"benchmarks.{NAME}", out, *inner, timeout=budget)
        except AssertionError as exc:
            print(exc, file=sys.stderr)
            return 1
    report = {
        "started_utc": started,
        "machine": machine_info(),
        "settings": {
            "turns": args.turns,
            "pause_s": args.pause,
            "barge_ins": args.barge_ins,
            "barge_in_pause_s": BARGE_PAUSE_S,
            "speakers": args.speakers,
            "server_settings": [f"llm.max_tokens={REPLY_TOKENS}", *args.set],
            "raw_mic": args.raw_mic,
            "browser_nice": args.browser_nice,
            "lead_s": LEAD_S,
            "caller_voice": QUESTIONS_VOICE,
            "page_loud_threshold": LOUD,
            "ws_loud_threshold": audio.LOUD,
            "chromium": chromium_version(),
            "network": "veth pair in a private network namespace (tests/netns.py)",
        },
        **measured,
    }
    print_summary(report)
    print(f"results: {write_json(report, NAME, args.out)}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__)
    parser.add_argument("inside_out", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--turns", type=int, default=5, help="questions to ask (default 5)")
    parser.add_argument(
        "--pause",
        type=float,
        default=DEFAULT_PAUSE_S,
        help=f"seconds of silence after each question (default {DEFAULT_PAUSE_S:g})",
    )
    parser.add_argument(
        "--barge-ins",
        type=int,
        default=5,
        help=f"cut-ins over the agent's stories (0-{len(CUT_INS) - 1}, default 5)",
    )
    parser.add_argument(
        "--speakers",
        choices=SPEAKERS,
        default="muted",
        help="the barge-in page's audio: muted (default), played out with the page's echo"
        " cancellation (aec) or without it and with the server's instead (no-aec:"
        " webrtc.echo_cancellation=true)",
    )
    parser.add_argument(
        "--raw-mic",
        action="store_true",
        help="the page's noise suppression and automatic gain unticked (both sessions)",
    )
    parser.add_argument(
        "--browser-nice",
        type=int,
        default=0,
        metavar="N",
        help="run Chromium at niceness N (default 0): the server on the same cores goes first,"
        " as if the browser were on the caller's own machine",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a server setting for the run (repeatable), e.g. vad.hold_threshold=0.15",
    )
    parser.add_argument("--out", type=Path, help=f"the output folder (default {RESULTS})")
    args = parser.parse_args(argv)
    if any("=" not in setting for setting in args.set):
        parser.error("--set takes SECTION.KEY=VALUE")
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    if not 0 <= args.barge_ins < len(CUT_INS):
        parser.error(f"--barge-ins must be 0 to {len(CUT_INS) - 1}")
    if args.inside and args.inside_out is None:
        parser.error("--inside needs the output path first")
    return args


def main(argv: list[str] | None = None) -> int:
    global BROWSER_NICE
    args = parse_args(argv)
    BROWSER_NICE = args.browser_nice
    if args.inside:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        report = asyncio.run(
            inside(args.turns, args.pause, args.barge_ins, args.speakers, args.set, args.raw_mic)
        )
        args.inside_out.write_text(json.dumps(report, indent=1))
        return 0
    return host(args)


if __name__ == "__main__":
    sys.exit(main())
