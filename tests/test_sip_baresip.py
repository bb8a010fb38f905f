"""End to end over SIP with a real softphone: baresip calls the in-process server on loopback.

baresip's microphone is a WAV made by espeak-ng at test time, what it hears is recorded; the
server runs the real embedded models. The recording is transcribed by the same whisper to check
that the caller heard the agent's reply, not noise."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from pipeline import messages as m
from pipeline.audio import resample
from pipeline.engines import Engines
from pipeline.session import Session
from voice.server import VoiceServer
from voice.sip_calls import SipCalls

from .conftest import espeak
from .sip.baresip import Baresip, write_wav
from .test_engines import wer

pytestmark = [pytest.mark.e2e, pytest.mark.models]
PHONE_QUESTION = "Good morning, can you hear me?"
TURN_TIMEOUT = 90.0


def caller_line(*utterances: str, tail_s: float = 60.0, gap_s: float = 0.5) -> np.ndarray:
    """What the caller's microphone says: a breath of silence, each utterance followed by
    ``gap_s`` of silence, then silence."""
    parts = [np.zeros(4000, np.int16)]
    gap = np.zeros(int(8000 * gap_s), np.int16)
    for text in utterances:
        parts += [espeak(text, rate=8000, voice="en-us", wpm=140), gap]
    parts.append(np.zeros(int(8000 * tail_s), np.int16))
    return np.concatenate(parts)


class Watch:
    """The call's session events, as they happen (an observer on the session)."""

    def __init__(self, session: Session) -> None:
        self.events: list[m.SessionEvent] = []
        self.changed = asyncio.Event()
        session.observers.append(self)

    def __call__(self, session: Session, event: m.SessionEvent) -> None:
        self.events.append(event)
        self.changed.set()

    async def until(self, predicate: Any, within: float, what: str) -> None:
        async with asyncio.timeout(within):
            while not predicate(self.events):
                self.changed.clear()
                await self.changed.wait()

    def replies_done(self, status: str = "completed") -> list[m.ReplyDone]:
        return [e for e in self.events if isinstance(e, m.ReplyDone) and e.status == status]


async def answered_session(server: VoiceServer, before: set[str]) -> Session:
    (session_id,) = set(server.sessions) - before
    return server.sessions[session_id]


def sip_call_id(server: VoiceServer, baresip_call_id: str) -> str:
    assert server.sip is not None and isinstance(server.sip.hooks, SipCalls)
    handle = server.sip.hooks.handle(baresip_call_id)
    assert handle is not None
    return handle.call_id


async def test_a_call_from_baresip(server: VoiceServer, engines: Engines, tmp_path: Path) -> None:
    assert server.sip is not None
    before = set(server.sessions)
    async with Baresip(tmp_path, caller_line(PHONE_QUESTION)) as phone:
        await phone.dial(f"sip:agent@127.0.0.1:{server.sip.port}")
        established = await phone.wait_event("CALL_ESTABLISHED", 20)
        session = await answered_session(server, before)
        watch = Watch(session)
        await watch.until(lambda _: watch.replies_done(), TURN_TIMEOUT, "the agent's reply")
        for digit in "42#":  # the keypad, over baresip's control socket (RFC 4733)
            await phone.command("sndcode", digit)
        await watch.until(
            lambda _: any(
                "4 2 #" in i.text for i in session.conversation.items if i.role == "user"
            ),
            30,
            "the keypad item",
        )
        # the agent hangs up, through the call-control API: BYE to the phone
        call_id = sip_call_id(server, established["id"])
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{server.port}/v1/realtime/calls/{call_id}/hangup"
            async with http.post(url) as response:
                assert response.status == 200
        closed = await phone.wait_event("CALL_CLOSED", 20)
    async with asyncio.timeout(30):
        record = await server.wait_ended(session.id)

    assert record["closed_reason"] == "hung up by the client", record
    assert closed["param"]  # baresip says why (the BYE)
    items: list[dict[str, str]] = record["items"]  # type: ignore[assignment]
    user = [i for i in items if i["role"] == "user"]
    assistant = [i for i in items if i["role"] == "assistant"]
    assert wer(PHONE_QUESTION, user[0]["text"]) <= 0.2, user[0]["text"]
    assert any("4 2 #" in i["text"] for i in user), user
    first_reply = assistant[0]["text"]
    assert assistant[0]["status"] == "completed" and first_reply.strip()

    # what the phone heard is the first reply, spoken
    (done, *_) = watch.replies_done()
    reply_samples = sum(
        len(e.audio) * 8000 // e.rate
        for e in watch.events
        if isinstance(e, m.ReplyAudio) and e.response_id == done.response_id
    )
    heard, rate = phone.recording()
    assert rate == 8000 and np.abs(heard).max() > 1000
    loud = np.flatnonzero(np.abs(heard) > 300)
    first = heard[max(0, loud[0] - 800) : loud[0] + reply_samples]
    text = await engines.asr.transcribe(resample(first, 8000, 16_000))
    assert wer(first_reply, text) <= 0.5, (first_reply, text)


async def test_barge_in_over_sip(server: VoiceServer, tmp_path: Path) -> None:
    """The caller cuts the story off: the reply ends (what was heard of it kept) and the
    interruption is the next turn. Once 1.5 s of the story has gone out, baresip's microphone is
    switched (its ``ausrc`` command) to a file that says the interruption."""
    assert server.sip is not None
    story = "Please tell me a long story about a brave little dragon."
    cut_in = "Wait a moment, I have a question about the dragon."
    write_wav(tmp_path / "cut_in.wav", caller_line(cut_in))
    before = set(server.sessions)
    async with Baresip(tmp_path, caller_line(story)) as phone:
        await phone.dial(f"sip:agent@127.0.0.1:{server.sip.port}")
        await phone.wait_event("CALL_ESTABLISHED", 20)
        session = await answered_session(server, before)
        watch = Watch(session)

        def story_told_s() -> float:
            audio = [e for e in watch.events if isinstance(e, m.ReplyAudio)]
            return sum(len(e.audio) / e.rate for e in audio)

        await watch.until(lambda _: story_told_s() >= 1.5, TURN_TIMEOUT, "the story")
        await phone.command("ausrc", f"aufile,{tmp_path / 'cut_in.wav'}")
        # (the cut-in's transcript, not its answer: a long answer may end ``incomplete`` at the
        # token limit, and hanging up over it must keep the transcript all the same)
        await watch.until(
            lambda events: (
                watch.replies_done("cancelled")
                and sum(isinstance(e, m.UserTranscript) for e in events) >= 2
            ),
            TURN_TIMEOUT,
            "the story cut off, and the cut-in transcribed",
        )
        await phone.command("hangup")
        await phone.wait_event("CALL_CLOSED", 20)
    async with asyncio.timeout(30):
        record = await server.wait_ended(session.id)
    items: list[dict[str, str]] = record["items"]  # type: ignore[assignment]
    assistant = [i for i in items if i["role"] == "assistant"]
    user = [i for i in items if i["role"] == "user"]
    assert assistant[0]["status"] == "incomplete", items
    assert len(user) >= 2, items
    # heard as said, give or take tiny.en on 8 kHz espeak (the Twilio test's twin once heard
    # "… I am a question about an American.": WER 0.3)
    assert wer(cut_in, user[1]["text"]) <= 0.5, items
    assert record["closed_reason"] == "the caller hung up (BYE)"
