"""baresip calls the agent over SIP on TCP (``sip:agent@…;transport=tcp``): the call is set up
and ended on baresip's connection, the media stays RTP over UDP, and the caller hears the
agent's reply (transcribed by the same whisper). The server runs the real embedded models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from pipeline import messages as m
from pipeline.audio import resample
from pipeline.engines import Engines
from transports.sip.tcp import TcpPeer
from voice.server import VoiceServer

from .sip.baresip import Baresip
from .test_engines import wer
from .test_sip_baresip import PHONE_QUESTION, TURN_TIMEOUT, Watch, answered_session, caller_line

pytestmark = [pytest.mark.e2e, pytest.mark.models]


async def test_a_call_from_baresip_over_tcp(
    server: VoiceServer, engines: Engines, tmp_path: Path
) -> None:
    agent = server.sip
    assert agent is not None and agent.tcp is not None
    before = set(server.sessions)
    async with Baresip(tmp_path, caller_line(PHONE_QUESTION)) as phone:
        await phone.dial(f"sip:agent@127.0.0.1:{agent.port};transport=tcp")
        established = await phone.wait_event("CALL_ESTABLISHED", 20)
        inbound = agent.dialogs[established["id"]]
        assert isinstance(inbound.source, TcpPeer) and inbound.dialog.transport == "TCP"
        assert inbound.dialog.remote_target.endswith(";transport=tcp")
        assert agent.tcp.connected(inbound.source)
        session = await answered_session(server, before)
        watch = Watch(session)
        await watch.until(lambda _: watch.replies_done(), TURN_TIMEOUT, "the agent's reply")
        await phone.command("hangup")  # baresip's BYE, on its connection
        await phone.wait_event("CALL_CLOSED", 20)
    async with asyncio.timeout(30):
        record = await server.wait_ended(session.id)

    assert record["closed_reason"] == "the caller hung up (BYE)", record
    items: list[dict[str, str]] = record["items"]  # type: ignore[assignment]
    user = [i for i in items if i["role"] == "user"]
    assistant = [i for i in items if i["role"] == "assistant"]
    assert wer(PHONE_QUESTION, user[0]["text"]) <= 0.2, user[0]["text"]
    first_reply = assistant[0]["text"]
    assert assistant[0]["status"] == "completed" and first_reply.strip()

    # what the phone heard (RTP over UDP) is the first reply, spoken
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
