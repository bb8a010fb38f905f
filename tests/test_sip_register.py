"""Digest authentication (RFC 2617 vectors) and registration with a registrar played by sipp:
a 401 challenge answered with credentials sipp verifies, then a refresh before the expiry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from transports.sip import digest
from transports.sip.message import SipError
from voice.server import VoiceServer

from . import conftest
from .fakes import fake_engines
from .sip.baresip import free_udp_port
from .sip.sipp import sipp

RFC2617 = digest.Challenge(
    realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth"
)


def test_rfc2617_example() -> None:
    value = digest.response_value(
        RFC2617,
        username="Mufasa",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
        nc="00000001",
    )
    assert value == "6629fae49393a05397450978507c4ef1"


def test_challenge_answer_verify_round_trip() -> None:
    header = digest.challenge("pbx.test", "abc123")
    parsed = digest.parse_challenge(header)
    assert (parsed.realm, parsed.nonce, parsed.qop, parsed.algorithm) == (
        "pbx.test",
        "abc123",
        "auth",
        "MD5",
    )
    answer = digest.authorization(
        parsed, username="agent", password="pw", method="INVITE", uri="sip:agent@h"
    )
    assert digest.verify(answer, method="INVITE", realm="pbx.test", users={"agent": "pw"}) == (
        "agent",
        "abc123",
    )
    with pytest.raises(SipError, match="wrong digest") as error:
        digest.verify(answer, method="INVITE", realm="pbx.test", users={"agent": "other"})
    assert error.value.status == 403
    with pytest.raises(SipError, match="wrong digest"):
        digest.verify(answer, method="BYE", realm="pbx.test", users={"agent": "pw"})


@pytest.mark.parametrize(
    "header",
    [
        'Basic realm="x"',
        'Digest nonce="n"',
        'Digest realm="r", nonce="n", algorithm=SHA-512',
        'Digest realm="r", nonce="n", qop="auth-int"',
    ],
)
def test_challenges_we_cannot_meet(header: str) -> None:
    with pytest.raises(SipError):
        digest.parse_challenge(header)


def test_sha256_without_qop() -> None:
    parsed = digest.parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-256')
    answer = digest.authorization(
        parsed, username="u", password="p", method="REGISTER", uri="sip:r"
    )
    assert "algorithm=SHA-256" in answer and "qop" not in answer
    assert digest.verify(answer, method="REGISTER", realm="r", users={"u": "p"}) == ("u", "n")


@pytest.mark.e2e
async def test_register_with_digest_and_refresh(tmp_path: Path) -> None:
    port = free_udp_port()
    registrar = asyncio.create_task(sipp(tmp_path, scenario="registrar.xml", port=port, limit_s=20))
    config = conftest.test_config()
    config.sip.registrar = f"sip:127.0.0.1:{port}"
    config.sip.password = "s3cret"
    server = VoiceServer(config, fake_engines(["x"], ["y"]))
    await server.start("127.0.0.1", 0)
    try:
        assert server.sip is not None and server.sip.registration is not None
        registration = server.sip.registration
        async with asyncio.timeout(20):
            while registration.refreshes < 2:  # the first REGISTER, then the refresh
                await registration.changed.wait()
        assert registration.registered and registration.expires == 3600
        run = await registrar
        assert run.returncode == 0, run.explain()
        assert 'Authorization: Digest username="agent"' in run.messages
        assert "To: <sip:agent@127.0.0.1>" in run.messages
    finally:
        await server.stop()


def test_nonces_say_when_they_were_made() -> None:
    key = b"k" * 16
    nonce = digest.make_nonce(key, 1000.0)
    assert digest.nonce_state(key, nonce, 1100.0) == "fresh"
    assert digest.nonce_state(key, nonce, 1000.0 + digest.NONCE_MAX_AGE_S + 1) == "stale"
    assert digest.nonce_state(b"x" * 16, nonce, 1100.0) == "forged"
    assert digest.nonce_state(key, "1000.000.deadbeef", 1100.0) == "forged"
    assert digest.nonce_state(key, "", 1100.0) == "forged"
