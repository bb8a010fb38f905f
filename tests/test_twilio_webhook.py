"""Twilio's voice webhook (``POST /v1/twilio/voice``): the TwiML that connects the call to the
media stream, its parameters, and the request's ``X-Twilio-Signature`` (with the URL spellings
Twilio signs). The signature is computed here from Twilio's documented recipe (HMAC-SHA1 over the
URL and the sorted form), independently of the server's code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import aiohttp
import pytest

from pipeline.errors import ProtocolError
from transports import twilio_signature
from transports import twilio_webhook as tw
from voice.server import VoiceServer

from .conftest import test_config as base_config
from .fakes import fake_engines

TOKEN = "tw-auth-token"
FORM = {"CallSid": "CA123", "AccountSid": "AC9", "From": "+15550100", "To": "+15550199"}


def twilio_sign(url: str, form: dict[str, str], token: str = TOKEN) -> str:
    data = url + "".join(k + form[k] for k in sorted(form))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[VoiceServer]:
    config = base_config()
    for key, value in getattr(request, "param", {}).items():
        setattr(config.twilio, key, value)
    server = VoiceServer(config, fake_engines(["unused"], ["Hi."]))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def post(
    server: VoiceServer, query: str = "", form: dict[str, str] | None = None, **headers: str
) -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.port}/v1/twilio/voice{query}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url,
            data=form if form is not None else FORM,
            headers={k.replace("_", "-"): v for k, v in headers.items()},
        ) as response,
    ):
        return response.status, await response.text()


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    (connect,) = list(root)
    (stream,) = list(connect)
    assert (connect.tag, stream.tag) == ("Connect", "Stream")
    params = {p.attrib["name"]: p.attrib["value"] for p in stream}
    return stream.attrib["url"], params


@pytest.mark.parametrize("server", [{"public_url": "wss://voice.example.com"}], indirect=True)
async def test_the_call_is_connected_to_the_stream_with_its_facts_and_instructions(
    server: VoiceServer,
) -> None:
    instructions = 'You are "Ada" <the desk> & you say "hello".'
    query = "?" + urlencode({"instructions": instructions, "voice": "marin"})
    status, twiml = await post(server, query)
    assert status == 200
    url, params = stream_of(twiml)
    assert url == "wss://voice.example.com/v1/twilio/media-stream"
    assert params == {**FORM, "instructions": instructions, "voice": "marin"}


async def test_without_a_public_url_the_stream_is_on_the_requests_host(server: VoiceServer) -> None:
    status, twiml = await post(server)
    assert status == 200
    url, _ = stream_of(twiml)
    assert url == f"ws://127.0.0.1:{server.port}/v1/twilio/media-stream"


@pytest.mark.parametrize(
    ("query", "code"),
    [("?nonsense=1", "unknown_parameter"), ("?instructions=" + "x" * 2001, "value_too_long")],
)
async def test_bad_query_parameters_are_refused_by_name(
    server: VoiceServer, query: str, code: str
) -> None:
    status, body = await post(server, query)
    assert status == 400 and code in body


@pytest.mark.parametrize(
    "server", [{"auth_token": TOKEN, "public_url": "https://voice.example.com"}], indirect=True
)
async def test_the_signature_is_checked_over_the_url_and_the_form(server: VoiceServer) -> None:
    url = "https://voice.example.com/v1/twilio/voice?instructions=Hi"
    good = twilio_sign(url, FORM)
    assert (await post(server, "?instructions=Hi", X_Twilio_Signature=good))[0] == 200
    # Twilio may have signed the URL with the default port written out
    with_port = twilio_sign("https://voice.example.com:443/v1/twilio/voice?instructions=Hi", FORM)
    assert (await post(server, "?instructions=Hi", X_Twilio_Signature=with_port))[0] == 200
    refusals = [
        await post(server, "?instructions=Hi"),  # no signature
        await post(server, "?instructions=Hi", X_Twilio_Signature=twilio_sign(url, FORM, "x")),
        await post(server, "?instructions=Bye", X_Twilio_Signature=good),  # another URL
        await post(server, "?instructions=Hi", {**FORM, "From": "+1666"}, X_Twilio_Signature=good),
        await post(server, "?instructions=Hi", X_Twilio_Signature="not base64 at all"),
    ]
    assert [status for status, _ in refusals] == [403] * 5
    assert all("invalid_signature" in body for _, body in refusals)


def test_url_variants_cover_the_default_port_both_ways() -> None:
    assert twilio_signature.url_variants("https://h.example/p?a=1") == [
        "https://h.example/p?a=1",
        "https://h.example:443/p?a=1",
    ]
    assert twilio_signature.url_variants("wss://h.example:443/p") == [
        "wss://h.example:443/p",
        "wss://h.example/p",
    ]
    assert twilio_signature.url_variants("https://h.example:8443/p") == ["https://h.example:8443/p"]
    assert twilio_signature.url_variants("https://h.example:x/p") == ["https://h.example:x/p"]
    assert twilio_signature.url_variants("ftp://h.example/p") == ["ftp://h.example/p"]


def test_twiml_escapes_and_drops_what_xml_cannot_carry() -> None:
    twiml = tw.connect_twiml("wss://h/s?a=1&b=2", {"instructions": "a\x00b<c>\"'&\n"})
    url, params = stream_of(twiml)
    assert url == "wss://h/s?a=1&b=2"
    assert params == {"instructions": "ab<c>\"'&\n"}


def test_stream_parameters_keep_the_facts_and_bound_them() -> None:
    form = {**FORM, "Caller": "ignored", "From": "+1" + "5" * 400}
    params = tw.stream_parameters(form, {"voice": "marin"})
    assert set(params) == {"CallSid", "AccountSid", "From", "To", "voice"}
    assert len(params["From"]) == tw.MAX_FACT_CHARS
    with pytest.raises(ProtocolError) as caught:
        tw.stream_parameters(FORM, {"temperature": "2"})
    assert caught.value.param == "temperature"


def test_call_headers_and_session_settings_from_custom_parameters() -> None:
    custom = {"CallSid": "CA1", "From": "+1555", "instructions": "Hi.", "other": "x"}
    assert tw.call_headers(custom, "CA1") == [
        ("X-Twilio-CallSid", "CA1"),
        ("X-Twilio-From", "+1555"),
    ]
    assert tw.call_headers({}, "CA2") == [("X-Twilio-CallSid", "CA2")]
    assert tw.session_settings(custom) == {"instructions": "Hi."}


@pytest.mark.parametrize(
    ("public", "expected"),
    [
        ("https://v.example/", "wss://v.example/v1/twilio/media-stream"),
        ("wss://v.example", "wss://v.example/v1/twilio/media-stream"),
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/v1/twilio/media-stream"),
    ],
)
def test_the_stream_url_from_the_public_url(public: str, expected: str) -> None:
    assert tw.stream_url(public, "ignored:1", secure=False) == expected
