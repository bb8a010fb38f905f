"""Calls out through ``POST /v1/sip/calls``, answered (or not) by sipp on loopback: sipp's
built-in UAS answers and waits for our BYE; scenarios for a busy callee and one that never
answers (we CANCEL). The fake engines speak for the agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from voice.server import VoiceServer

from . import conftest
from .fakes import fake_engines
from .sip.baresip import free_port, free_udp_port
from .sip.sipp import sipp

pytestmark = [pytest.mark.e2e]


@pytest.fixture
async def phone_server() -> AsyncIterator[VoiceServer]:
    server = VoiceServer(
        conftest.test_config(), fake_engines(["yes"], ["Hello, this is your reminder call."])
    )
    await server.start("127.0.0.1", 0)
    assert server.sip is not None
    server.sip.options.ring_timeout = 2.0
    yield server
    await server.stop()


async def post(server: VoiceServer, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{server.port}{path}"
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        return response.status, await response.json(content_type=None)


async def test_an_outbound_call_answered_by_sipp(phone_server: VoiceServer, tmp_path: Path) -> None:
    port = free_udp_port()
    callee = asyncio.create_task(sipp(tmp_path, "-sn", "uas", port=port, limit_s=30))
    status, outcome = await post(
        phone_server,
        "/v1/sip/calls",
        {"to": f"sip:callee@127.0.0.1:{port}", "instructions": "Remind them of the dentist."},
    )
    assert status == 200 and outcome["status"] == "answered", outcome
    call_id = outcome["call_id"]
    assert call_id.startswith("sip_")
    (session,) = phone_server.sessions.values()
    assert session.settings.instructions == "Remind them of the dentist."
    # the agent speaks first; then it hangs up through the call control API: BYE to sipp
    done = asyncio.Event()
    session.observers.append(lambda s, e: done.set() if type(e).__name__ == "ReplyDone" else None)
    async with asyncio.timeout(20):
        await done.wait()
    status, _ = await post(phone_server, f"/v1/realtime/calls/{call_id}/hangup", {})
    assert status == 200
    run = await callee
    assert run.returncode == 0, run.explain()
    record = await phone_server.wait_ended(session.id)
    items: list[dict[str, str]] = record["items"]  # type: ignore[assignment]
    assert items[0]["role"] == "assistant" and items[0]["text"].startswith("Hello"), items
    assert "BYE sip:" in run.messages and "RTP/AVP 9 0 8 101" in run.messages


async def test_a_busy_callee(phone_server: VoiceServer, tmp_path: Path) -> None:
    port = free_udp_port()
    callee = asyncio.create_task(sipp(tmp_path, scenario="uas_busy.xml", port=port, limit_s=20))
    status, outcome = await post(phone_server, "/v1/sip/calls", {"to": f"sip:b@127.0.0.1:{port}"})
    assert (status, outcome["status"], outcome["sip_status"]) == (200, "busy", 486), outcome
    assert outcome["call_id"] is None and not phone_server.sessions
    run = await callee
    assert run.returncode == 0, run.explain()


async def test_no_answer_is_cancelled(phone_server: VoiceServer, tmp_path: Path) -> None:
    port = free_udp_port()
    callee = asyncio.create_task(
        sipp(tmp_path, scenario="uas_no_answer.xml", port=port, limit_s=20)
    )
    status, outcome = await post(phone_server, "/v1/sip/calls", {"to": f"sip:n@127.0.0.1:{port}"})
    assert (status, outcome["status"], outcome["sip_status"]) == (200, "no-answer", 487), outcome
    run = await callee
    assert run.returncode == 0, run.explain()
    assert "CANCEL sip:n@127.0.0.1" in run.messages


def listens(port: int) -> bool:
    """Whether something listens on TCP ``127.0.0.1:port``, from the kernel's socket table
    (without connecting: a probe connection would be a caller to sipp)."""
    return f"0100007F:{port:04X} 00000000:0000 0A" in Path("/proc/net/tcp").read_text()


async def listening(port: int, within: float = 10.0) -> None:
    """Return once sipp listens on ``port``; it has no way to say so but its socket."""
    async with asyncio.timeout(within):
        while not listens(port):  # noqa: ASYNC110 (no event to wait on: the socket table is read)
            await asyncio.sleep(0.05)


async def test_an_outbound_call_over_tcp(phone_server: VoiceServer, tmp_path: Path) -> None:
    """``;transport=tcp`` in the target: the INVITE, its ACK and our BYE go over one TCP
    connection (Via TCP, Contact ``;transport=tcp``), answered by sipp's UAS on TCP."""
    port = free_port()
    callee = asyncio.create_task(sipp(tmp_path, "-sn", "uas", "-t", "t1", port=port, limit_s=30))
    await listening(port)
    target = f"sip:callee@127.0.0.1:{port};transport=tcp"
    status, outcome = await post(phone_server, "/v1/sip/calls", {"to": target})
    assert status == 200 and outcome["status"] == "answered", outcome
    session_id = next(iter(phone_server.sessions))
    status, _ = await post(phone_server, f"/v1/realtime/calls/{outcome['call_id']}/hangup", {})
    assert status == 200
    run = await callee
    assert run.returncode == 0, run.explain()
    await phone_server.wait_ended(session_id)
    assert phone_server.sip is not None
    sip_port = phone_server.sip.port
    assert f"INVITE {target} SIP/2.0" in run.messages, run.explain()
    assert f"Via: SIP/2.0/TCP 127.0.0.1:{sip_port};" in run.messages
    assert f"<sip:agent@127.0.0.1:{sip_port};transport=tcp>" in run.messages
    assert "BYE sip:" in run.messages and "SIP/2.0/UDP" not in run.messages


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "missing_field"),
        ({"to": "tel:+15551234"}, "invalid_value"),
        ({"to": "sip:a@127.0.0.1", "voice": "x"}, "unknown_parameter"),
        ({"to": "sip:a@127.0.0.1", "instructions": 5}, "invalid_type"),
        ({"to": "sip:a@127.0.0.1:99999"}, "invalid_target"),
    ],
)
async def test_bad_requests(phone_server: VoiceServer, body: dict[str, Any], code: str) -> None:
    status, error = await post(phone_server, "/v1/sip/calls", body)
    assert status == 400 and error["error"]["code"] == code, error
