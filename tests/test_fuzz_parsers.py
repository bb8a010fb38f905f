"""Every parser, fed what a careless or hostile peer could send (hypothesis, deterministic).

Each property has one shape: any input either parses or is refused with the parser's own error
and a code, never anything else. The inputs are random text and bytes, the real message shapes
with random values in every field, and real messages mutated one line or one field at a time.
``benchmarks/fuzz.py`` runs the same kinds of input for minutes against a running server.
"""

from __future__ import annotations

import asyncio
import gc
import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as tally
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from pipeline.engines.tools import ToolSpec, check_tool
from pipeline.errors import ConfigError, ProtocolError
from pipeline.session import Session, SessionSettings
from transports import twilio_messages as tw
from transports import twilio_signature
from transports.sdp import OfferSummary, check_offer
from transports.twilio import TwilioStream
from transports.webrtc import WebRtcCall, WebRtcOptions
from voice import auth, client_secrets
from voice.auth import _json as mint_body
from voice.config import Config, load, sections

from .fakes import fake_engines, silence
from .harness import Harness
from .offers import OFFER
from .realtime_schema import validate_server_event
from .test_hostile_client import connection

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
Event = dict[str, Any]

_surrogate = st.characters(categories=["Cs"])
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.lists(st.characters() | _surrogate, max_size=8).map("".join),  # "\\ud800" in JSON
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
"""Any JSON value."""
_any_text = st.lists(st.characters(exclude_categories=()) | _surrogate, max_size=200).map("".join)
"""Any text, lone surrogates included (what ``surrogateescape`` makes of bad bytes)."""


def _now_and_then(one_in: int) -> st.SearchStrategy[bool]:
    """True once in ``one_in`` draws (a middle value: hypothesis favours the ends of a range)."""
    return st.integers(0, one_in - 1).map(lambda n: n == one_in // 2)


def _maybe(*plausible: Any) -> st.SearchStrategy[Any]:
    """One of the values a field is meant to take (3 times in 4), or any JSON value at all."""
    return _now_and_then(4).flatmap(lambda wild: _json if wild else st.sampled_from(plausible))


@st.composite
def _object(draw: st.DrawFn, **fields: st.SearchStrategy[Any]) -> dict[str, Any]:
    """An object with a few of ``fields`` (at most 4, as a client sets them), one time in 20
    an unknown key too."""
    names = draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True))
    obj = {name: draw(fields[name]) for name in names}
    if draw(_now_and_then(20)):
        obj[draw(st.sampled_from(["x", "extra"]))] = draw(_json)
    return obj


# ---------------------------------------------------------------- SDP

_LINES = OFFER.split("\r\n")
_sdp_line = (
    st.sampled_from(_LINES)
    | st.sampled_from(
        ["a=recvonly", "a=inactive", "a=sendonly", "m=audio", "m=video 9 X 96", "v=1"]
    )
    | _any_text.map(lambda t: t.replace("\n", ""))
)


@st.composite
def _mutated_offer(draw: st.DrawFn) -> str:
    lines = list(_LINES)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines)))
        op = draw(st.sampled_from(["delete", "replace", "insert", "cut", "duplicate"]))
        if op == "insert" or not lines:
            lines.insert(i, draw(_sdp_line))
        elif op == "delete":
            del lines[i % len(lines)]
        elif op == "replace":
            lines[i % len(lines)] = draw(_sdp_line)
        elif op == "cut":
            line = lines[i % len(lines)]
            lines[i % len(lines)] = line[: draw(st.integers(0, len(line)))]
        else:
            lines.insert(i, lines[i % len(lines)])
    return draw(st.sampled_from(["\r\n", "\n", "\r"])).join(lines)


def test_the_real_offer_is_accepted() -> None:
    assert check_offer(OFFER) == OfferSummary(("audio", "application"), True)


@FUZZ
@given(sdp=_mutated_offer() | _any_text | st.text(alphabet=string.printable, max_size=400))
def test_any_sdp_parses_or_is_refused_with_a_code(sdp: str) -> None:
    try:
        summary = check_offer(sdp)
    except ProtocolError as exc:
        assert exc.code in ("invalid_sdp", "no_audio"), exc
        assert str(exc)
    else:
        assert "audio" in summary.media


@pytest.mark.parametrize(
    "sdp",
    [
        OFFER.replace("a=setup:actpass\r\n", ""),  # AttributeError in aiortc
        OFFER.replace("a=mid:0", "a=mid:1"),  # a mid twice: AttributeError in a task of aiortc
        OFFER.replace("a=rtcp-mux", "a=rtcp"),
        OFFER.replace("c=IN IP4 0.0.0.0\r\na=mid:1", "c=IN\r\na=mid:1"),  # AssertionError
        OFFER.replace("a=fingerprint:", "a=x-fingerprint:"),  # answered; then an AssertionError
        OFFER.replace(" 111 0 8", " 96").replace("opus/48000/2", "x/8000").replace("PCMU", "y"),
    ],
)
async def test_offers_that_broke_the_webrtc_stack_are_refused_and_the_call_ends(sdp: str) -> None:
    await _answer(sdp)


@settings(FUZZ, max_examples=30)
@given(sdp=_mutated_offer())
def test_an_offer_is_answered_or_refused_and_its_call_always_ends(sdp: str) -> None:
    asyncio.run(_answer(sdp))


async def _answer(sdp: str) -> None:
    """What ``POST /v1/realtime/calls`` does with an offer: answer it, or refuse it with a
    ``ProtocolError`` (400), and end the call either way, once, even hung up at once; aiortc's
    own tasks must not fail either (asyncio's "exception was never retrieved" log)."""
    loop = asyncio.get_running_loop()
    failures: list[dict[str, Any]] = []
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: failures.append(context))
    try:
        session = Session(fake_engines(["x"], ["y"]), SessionSettings(turn_detection=None))
        ended: list[WebRtcCall] = []
        call = WebRtcCall(connection(session), WebRtcOptions(), ended.append)
        try:
            answer = await call.answer(sdp)
        except ProtocolError as exc:
            assert exc.code in ("invalid_sdp", "no_audio"), exc
        else:
            assert answer.startswith("v=0")
        async with asyncio.timeout(10):
            await call.close("test over")
        assert ended == [call]
        await asyncio.sleep(0.05)  # aiortc's connect task, had it started, has failed by now
        gc.collect()
        assert not failures, failures
    finally:
        loop.set_exception_handler(handler)


# ---------------------------------------------------------------- Twilio Media Streams

_TWILIO_CODES = {
    "invalid_json", "unknown_event", "missing_field", "invalid_field", "invalid_audio",
    "unsupported_media_format",
}  # fmt: skip
_sid = _maybe("MZ123", "MZ456", "")
_seq = _maybe("1", "2", "0", "-1", "1.5", "٣", "9" * 19) | st.integers()
_b64 = _maybe("", "AAAA", "//7+", "AAA", "not base64!", "AA==AA")
_twilio = st.one_of(
    _object(event=st.just("connected"), protocol=_maybe("Call"), version=_maybe("1.0.0")),
    _object(
        event=st.just("start"),
        sequenceNumber=_seq,
        streamSid=_sid,
        start=_object(
            streamSid=_sid,
            accountSid=_maybe("AC1"),
            callSid=_maybe("CA1"),
            tracks=_maybe(["inbound"], ["inbound", "outbound"], [1]),
            customParameters=_maybe({"a": "b"}, {"a": 1}, []),
            mediaFormat=_object(
                encoding=_maybe("audio/x-mulaw", "audio/x-alaw"),
                sampleRate=_maybe(8000, "8000", 16000),
                channels=_maybe(1, "1", 2),
            ),
        ),
    ),
    _object(
        event=st.just("media"),
        sequenceNumber=_seq,
        streamSid=_sid,
        media=_object(
            track=_maybe("inbound", "outbound"), chunk=_seq, timestamp=_seq, payload=_b64
        ),
    ),
    _object(
        event=st.just("dtmf"),
        streamSid=_sid,
        dtmf=_object(digit=_maybe("1", "#", "E", ""), track=_maybe("inbound_track")),
    ),
    _object(
        event=st.just("mark"), streamSid=_sid, mark=_object(name=_maybe("resp_1", "~item~200", "~"))
    ),
    _object(
        event=_maybe("stop", "clear", "media"), streamSid=_sid, stop=_object(callSid=_maybe("CA1"))
    ),
)
_twilio_frame = (
    _twilio.map(json.dumps) | _any_text | st.binary(max_size=200) | _json.map(json.dumps)
)


@FUZZ
@given(frame=_twilio_frame)
def test_any_twilio_frame_parses_or_is_refused_with_a_code(frame: str | bytes) -> None:
    try:
        message = tw.parse(frame)
    except ProtocolError as exc:
        assert exc.code in _TWILIO_CODES, exc
    else:
        assert isinstance(message, tw.Connected | tw.Start | tw.Media | tw.Dtmf | tw.Mark | tw.Stop)


_START = json.dumps(
    {
        "event": "start",
        "streamSid": "MZ123",
        "start": {
            "streamSid": "MZ123",
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
)


@FUZZ
@given(frames=st.lists(_twilio_frame, min_size=1, max_size=8), started=st.booleans())
def test_a_twilio_stream_never_raises_and_counts_what_it_skipped(
    frames: list[str | bytes], started: bool
) -> None:
    asyncio.run(_twilio_stream(([_START] if started else []) + frames))


async def _twilio_stream(frames: list[str | bytes]) -> None:
    session = Session(fake_engines(["x"], ["y"]), SessionSettings(turn_detection=None))
    runner = asyncio.create_task(session.run())
    stream = TwilioStream(session)
    try:
        for frame in frames:
            before = stream.malformed + stream.dropped_media
            stream.receive(frame)
            refused = stream.malformed + stream.dropped_media - before
            assert refused in (0, 1)
            if isinstance(frame, bytes):
                assert stream.malformed and refused == 1
            await asyncio.sleep(0)
        assert session.closed_reason is None
    finally:
        session.close("test over")
        await runner


# ---------------------------------------------------------------- Twilio's signature

_params = st.none() | st.dictionaries(_any_text, _any_text, max_size=4)


@FUZZ
@given(token=_any_text, url=_any_text, header=st.none() | _any_text, params=_params)
def test_the_signature_check_never_raises(
    token: str, url: str, header: str | None, params: dict[str, str] | None
) -> None:
    assert twilio_signature.is_valid(token, url, header, params) in (True, False)
    signed = twilio_signature.signature(token, url, params)
    assert twilio_signature.is_valid(token, url, signed, params)
    assert twilio_signature.is_valid(token, url, f" {signed}\t", params)


_header = _any_text | st.sampled_from(["Bearer ", "Bearer sk-1", "Bearer ek_\udcff", "bearer  x "])


@FUZZ
@given(
    authorization=st.none() | _header,
    protocols=st.lists(_header | _any_text.map(lambda t: auth.SUBPROTOCOL + t), max_size=3),
    origin=st.none() | _any_text | st.sampled_from(["http://[", "http://a]", "https://x.org/"]),
    host=st.none() | _any_text,
)
def test_credentials_and_origins_from_any_header_never_raise(
    authorization: str | None, protocols: list[str], origin: str | None, host: str | None
) -> None:
    headers = CIMultiDict([("Sec-WebSocket-Protocol", p) for p in protocols])
    if authorization is not None:
        headers["Authorization"] = authorization
    given = auth.credential(CIMultiDictProxy(headers))
    if given is not None:
        assert auth.fingerprint(given).startswith("fp_")
        assert auth.match_key(given, ["sk-1", "\u00e9"]) in (None, "sk-1", "\u00e9")
        assert client_secrets.SecretStore(4).find(given) is None
    for allowed in ([], ["*"], ["https://x.org"]):
        assert auth.origin_allowed(origin, host, allowed) in (True, False)


# ---------------------------------------------------------------- client secrets

_expires = _object(
    anchor=_maybe("created_at", "now"), seconds=_maybe(9, 10, 600, 7200, 7201, True, 1.5)
)
_mint = _object(expires_after=_expires | _json, session=_json) | _json
_CLIENT_SECRET_CODES = {"invalid_type", "unknown_parameter", "invalid_value", "invalid_json"}


@FUZZ
@given(body=_mint)
def test_a_client_secret_request_parses_or_names_its_fault(body: Any) -> None:
    try:
        session, seconds = client_secrets.parse_request(body)
    except ProtocolError as exc:
        assert exc.code in _CLIENT_SECRET_CODES, exc
    else:
        assert isinstance(session, dict)
        assert client_secrets.MIN_S <= seconds <= client_secrets.MAX_S


@FUZZ
@given(data=st.binary(max_size=200) | _mint.map(lambda b: json.dumps(b).encode()))
def test_a_client_secret_body_is_json_or_invalid_json(data: bytes) -> None:
    try:
        mint_body(data)
    except ProtocolError as exc:
        assert exc.code == "invalid_json"


# ---------------------------------------------------------------- the configuration

_KEYS = [(name, key) for name, cls in sections() for key in cls.__dataclass_fields__]
_config_value = (
    st.sampled_from(["", "0", "1", "-1", "true", "off", "1.5", "nan", "inf", "1e999", "9" * 5000])
    | st.integers().map(str)
    | st.floats().map(str)
    | _any_text
)


@FUZZ
@given(
    env=st.dictionaries(
        st.sampled_from(_KEYS).map(lambda k: f"VOICE_{k[0]}_{k[1]}".upper()), _config_value
    ),
    overrides=st.dictionaries(
        st.sampled_from(_KEYS).map(".".join) | st.text(max_size=12), _config_value, max_size=4
    ),
)
def test_any_environment_and_flags_load_or_are_a_config_error(
    env: dict[str, str], overrides: dict[str, str]
) -> None:
    try:
        config = load(env=env, overrides=overrides)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert isinstance(config, Config)
        _assert_typed(config)


_toml_value = st.one_of(
    st.integers().map(str),
    st.floats().map(str),  # nan, inf and -inf are TOML floats too
    st.sampled_from(["true", "false", "nan", "inf", '"x"', "[1, 2]", "{a = 1}", "1979-05-27"]),
    st.text(max_size=10).map(json.dumps),
)


@FUZZ
@given(
    entries=st.lists(
        st.tuples(
            st.sampled_from(_KEYS)
            | st.tuples(st.just("server"), st.text(string.ascii_lowercase, min_size=1, max_size=5)),
            _toml_value,
        ),
        max_size=6,
    ),
    top=st.sampled_from(["", "server = 5\n", 'vad = "x"\n', "nope = 1\n", "[[server]]\n"]),
)
def test_any_toml_file_loads_or_is_a_config_error(
    tmp_path_factory: Any, entries: list[tuple[tuple[str, str], str]], top: str
) -> None:
    tables: dict[str, dict[str, str]] = {}
    for (section, key), value in entries:
        tables.setdefault(section, {})[key] = value
    text = top + "".join(
        f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in table.items())
        for section, table in tables.items()
    )
    path = Path(tmp_path_factory.mktemp("toml")) / "voice.toml"
    path.write_text(text)
    try:
        config = load(path, env={})
    except ConfigError as exc:
        assert str(exc)
    else:
        _assert_typed(config)


def _assert_typed(config: Config) -> None:
    """Every loaded value has its field's type, and no number is NaN or infinite."""
    for name, cls in sections():
        section = getattr(config, name)
        for key, f in cls.__dataclass_fields__.items():
            value = getattr(section, key)
            kind = {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]
            assert type(value) is kind or (kind is float and type(value) is int), (key, value)
            if kind is float:
                assert value == value and abs(value) != float("inf"), (key, value)


# ---------------------------------------------------------------- Realtime: session.update

_format = _maybe(
    {"type": "audio/pcm", "rate": 24000}, {"type": "audio/pcm", "rate": 16000},
    {"type": "audio/pcmu"}, {"type": "audio/pcma"}, "pcm16", "g711_ulaw", "audio/opus",
)  # fmt: skip
_turn_detection = st.none() | _object(
    type=_maybe("server_vad", "semantic_vad", "none"),
    threshold=st.floats(-0.5, 1.5) | _json,
    prefix_padding_ms=st.integers(-10, 3000) | _json,
    silence_duration_ms=st.integers(-10, 12_000) | _json,
    idle_timeout_ms=st.none() | st.integers(0, 40_000) | _json,
    eagerness=_maybe("low", "medium", "high", "auto", "eager"),
    create_response=st.booleans() | _json,
    interrupt_response=st.booleans() | _json,
)
_transcription = st.none() | _object(
    model=_maybe("whisper-1", "gpt-4o-transcribe", "whisper", None, "gpt-4o-transcribe-diarize"),
    language=_maybe("en", "fr", "", None),
    prompt=_maybe("", None, "words"),
    delay=_maybe(None, "low"),
    keywords=_maybe([], None, ["a"]),
    languages=_maybe([], None, ["en"]),
)
_schema_type = _maybe("object", "array", "string", "integer", ["string", "null"], "date", {}, [[]])
_schema = st.recursive(
    _object(type=_schema_type),
    lambda inner: _object(
        type=_schema_type,
        properties=st.dictionaries(st.text(max_size=8), inner, max_size=3) | _json,
        required=_maybe(["a"], [], [1]),
        items=inner | st.lists(inner, max_size=2),
        anyOf=st.lists(inner, max_size=2) | _json,
        enum=_maybe(["a", "b"], [], "a"),
        additionalProperties=st.booleans() | inner,
        **{"$ref": _maybe("#/defs/a", "http://x", 5)},
    ),
    max_leaves=8,
)
_parameters = st.builds(
    lambda properties, rest: {**rest, "type": "object", "properties": properties},
    st.dictionaries(st.text(max_size=8), _schema, min_size=1, max_size=3),
    _object(required=_maybe(["a"], [1]), additionalProperties=st.booleans() | _schema),
)
"""A tool's parameters as clients write them: an object schema with properties."""
_tool = _object(
    type=_maybe("function", "mcp"),
    name=_maybe("get_weather", "f", "a" * 65, "no spaces", ""),
    description=st.text(max_size=20) | _json,
    parameters=_parameters | _schema | _json,
)
_tools = st.lists(_tool, max_size=3) | _json


@FUZZ
@given(
    parameters=_parameters | _schema | _json,
    name=_now_and_then(8).flatmap(lambda odd: st.text(max_size=70) if odd else st.just("f")),
)
def test_any_tool_schema_is_usable_or_a_value_error(parameters: Any, name: str) -> None:
    try:
        check_tool(ToolSpec(name, "", parameters))
    except ValueError as exc:
        assert str(exc)


def test_a_schema_whose_type_is_no_string_is_refused_by_name() -> None:
    """It raised TypeError (unhashable) from ``check_tool``: an internal error on a WebSocket,
    HTTP 500 for ``/v1/realtime/calls`` and ``/v1/realtime/client_secrets`` (benchmarks/fuzz.py)."""
    items = {"type": "array", "items": {"type": {}}}
    event = {
        "type": "session.update",
        "session": {
            "tools": [{"name": "f", "parameters": {"type": "object", "properties": {"a": items}}}]
        },
    }
    (out,) = connection().receive(json.dumps(event))
    assert out["type"] == "error" and out["error"]["code"] == "invalid_tool", out
    assert "unknown type {}" in out["error"]["message"]


_tool_choice = _maybe(
    "auto", "none", "required", {"type": "function", "name": "get_weather"},
    {"type": "function", "name": "nope"}, {"type": "mcp", "server_label": "x"},
)  # fmt: skip
_voice = _maybe("alloy", "marin", {"id": "cedar"}, "nobody", {"id": 5})
_audio = _object(
    input=_object(
        format=_format,
        turn_detection=_turn_detection,
        transcription=_transcription,
        noise_reduction=st.none() | _json,
    )
    | _json,
    output=_object(format=_format, voice=_voice, speed=st.floats(0, 2) | _json) | _json,
)
_session = _object(
    type=_maybe("realtime", "transcription"),
    model=_maybe("voice-local", "gpt-realtime", "gpt-4o-mini-realtime-preview", "other"),
    instructions=st.text(max_size=40) | _json,
    output_modalities=_maybe(["audio"], ["text"], ["audio", "text"], []),
    modalities=_maybe(["audio", "text"], ["text"]),
    max_output_tokens=_maybe("inf", 1, 4096, 4097, 0, True),
    max_response_output_tokens=_maybe("inf", 100),
    tools=_tools,
    tool_choice=_tool_choice,
    temperature=st.floats(0, 2) | _json,
    audio=_audio | _json,
    voice=_voice,
    speed=st.floats(0, 2),
    turn_detection=_turn_detection,
    input_audio_transcription=_transcription,
    input_audio_format=_format,
    output_audio_format=_format,
    parallel_tool_calls=_maybe(True, False),
    truncation=_maybe("auto", "disabled"),
    include=_maybe(None, [], ["item.input_audio_transcription.logprobs"]),
    tracing=_maybe(None, "auto"),
    prompt=_maybe(None, {"id": "p"}),
    reasoning=_maybe(None, {"effort": "low"}),
    id=_maybe("sess_1"),
    object=_maybe("realtime.session"),
)


def _one_answer(out: list[Event], ok: str) -> Event | None:
    """The error of a refused event (None if it was taken); no internal errors, ever."""
    for event in out:
        validate_server_event(event)
    if out and out[0]["type"] == "error":
        error: Event = out[0]["error"]
        assert len(out) == 1, out
        assert error["code"] not in (None, "internal_error", error["type"]), error
        assert error["message"]
        tally(f"refused: {error['code']} {error['param']}")  # (--hypothesis-show-statistics)
        return error
    assert [e["type"] for e in out] in ([ok], []), out
    tally("taken")
    return None


@FUZZ
@given(session=_session)
def test_any_session_update_is_applied_whole_or_refused_by_name(session: Event) -> None:
    conn = connection()
    before = conn.config.describe()
    out = conn.receive(json.dumps({"type": "session.update", "session": session}))
    error = _one_answer(out, "session.updated")
    if error is not None:
        assert conn.config.describe() == before  # all or nothing
        assert error["param"] is None or error["param"].split(".")[0] in ("session", "type")
    else:
        assert out[0]["session"] == conn.config.describe()
    assert conn.session.closed_reason is None


@pytest.mark.parametrize(
    "event",
    [
        {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a\ud908"}]}},
        {"type": "session.update", "session": {"instructions": "\udc00"}},
        {"type": "response.create", "response": {"metadata": {"k": "\ud800"}}},
    ],
)  # fmt: skip
def test_a_lone_surrogate_escape_is_invalid_json_not_an_internal_error(event: Event) -> None:
    """``"\\ud908"`` is valid JSON but no text: it raised UnicodeEncodeError where the session
    counts bytes, in the store's writer and behind ``/v1/realtime/calls`` (benchmarks/fuzz.py)."""
    conn = connection()
    (out,) = conn.receive(json.dumps(event))
    assert out["type"] == "error" and out["error"]["code"] == "invalid_json", out
    assert conn.session.conversation.items == []
    mark = {"event": "mark", "streamSid": "s", "mark": {"name": "\ud800"}}
    with pytest.raises(ProtocolError, match="lone surrogate"):
        tw.parse(json.dumps(mark))


# ---------------------------------------------------------------- Realtime: items and responses

_content = st.lists(
    _object(
        type=_maybe("input_text", "text", "output_text", "input_audio", "input_image"),
        text=st.text(max_size=20) | _json,
        audio=_b64,
        transcript=_maybe(None, "", "said"),
    ),
    max_size=3,
)
_item = _object(
    type=_maybe("message", "function_call", "function_call_output", "item_reference"),
    id=_maybe("item_a", "item_b", "", None),
    object=_maybe("realtime.item", "realtime.response"),
    status=_maybe("completed", "incomplete"),
    role=_maybe("user", "assistant", "system", "tool"),
    content=_content | _json,
    call_id=_maybe("call_1", "call_2"),
    name=_maybe("get_weather"),
    arguments=_maybe("{}", '{"city": "Paris"}', "not json"),
    output=_maybe("sunny"),
)
_response = _object(
    conversation=_maybe("auto", "none", None, "other"),
    input=st.lists(_item, max_size=3) | _json,
    instructions=st.text(max_size=20) | _json,
    metadata=_maybe(None, {"a": "b"}, {"k" * 65: "v"}, {"a": 1}, {str(i): "v" for i in range(17)}),
    output_modalities=_maybe(["text"], ["audio"], ["video"]),
    modalities=_maybe(["text"]),
    max_output_tokens=_maybe("inf", 1, 5000),
    tools=_tools,
    tool_choice=_tool_choice,
    temperature=st.floats(0, 2) | _json,
    audio=_object(output=_object(voice=_voice, format=_format) | _json) | _json,
    voice=_voice,
    output_audio_format=_format,
    parallel_tool_calls=_maybe(True, False),
    prompt=_maybe(None, {"id": "p"}),
    reasoning=_maybe(None, {}),
)
_client_event = st.one_of(
    st.builds(
        lambda i, p: {"type": "conversation.item.create", "item": i, **p},
        _item,
        _object(previous_item_id=_maybe("item_a", "root", None, "nope")),
    ),
    st.builds(lambda r: {"type": "response.create", "response": r}, _response),
    st.builds(lambda s: {"type": "session.update", "session": s}, _session),
    st.builds(
        lambda r: {"type": "response.cancel", **r}, _object(response_id=_maybe("resp_1", None))
    ),
    st.builds(
        lambda i: {"type": "conversation.item.truncate", **i},
        _object(
            item_id=_maybe("item_a"), content_index=_maybe(0, 1), audio_end_ms=_maybe(0, 100, -1)
        ),
    ),
    st.sampled_from(["conversation.item.delete", "conversation.item.retrieve"]).map(
        lambda t: {"type": t, "item_id": "item_a"}
    ),
)


@FUZZ
@given(events=st.lists(_client_event, min_size=1, max_size=6))
def test_any_items_and_responses_are_done_or_refused_and_the_session_goes_on(
    events: list[Event],
) -> None:
    asyncio.run(_conversation(events))


async def _conversation(events: list[Event]) -> None:
    async with Harness(
        fake_engines(["x"], ["One two."]), SessionSettings(turn_detection=None)
    ) as h:
        conn = connection(h.session)
        seen = 0
        for event in events:
            _one_answer(conn.receive(json.dumps(event)), "session.updated")
            for _ in range(5):
                await h.feed(silence(0.02))
            for _, ev in h.events[seen:]:
                for server_event in conn.render(ev):  # what the client would be sent
                    validate_server_event(server_event)
                    json.dumps(server_event)
            seen = len(h.events)
            assert h.session.closed_reason is None
        # and a well-formed turn still gets its answer
        text = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
        }
        conn.receive(json.dumps({"type": "response.cancel"}))
        assert conn.receive(json.dumps({"type": "conversation.item.create", "item": text})) == []
        out = conn.receive(
            json.dumps(
                {
                    "type": "response.create",
                    "response": {"tool_choice": "none", "tools": [], "output_modalities": ["text"]},
                }
            )
        )
        assert out == [] or out[0]["error"]["code"] == "conversation_already_has_active_response"
