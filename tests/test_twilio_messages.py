"""The Twilio Media Streams codec, with bytes and strings only (no socket, no session)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from pipeline.errors import ProtocolError
from transports import twilio_messages as tw

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
AUDIO = bytes(range(256))[:160]  # 20 ms of μ-law


def frame(obj: dict[str, Any]) -> str:
    return json.dumps(obj)


def start(**fmt: Any) -> dict[str, Any]:
    media_format = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1} | fmt
    return {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC123",
            "streamSid": SID,
            "callSid": "CA456",
            "tracks": ["inbound"],
            "mediaFormat": media_format,
            "customParameters": {"caller": "+15550100"},
        },
        "streamSid": SID,
    }


def media(payload: Any = None, **extra: Any) -> dict[str, Any]:
    body = {
        "track": "inbound",
        "chunk": "2",
        "timestamp": "5",
        "payload": base64.b64encode(AUDIO).decode() if payload is None else payload,
    }
    return {"event": "media", "sequenceNumber": "3", "media": body, "streamSid": SID} | extra


def error_of(data: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        tw.parse(data)
    return caught.value


# ------------------------------------------------------------------ every message kind


def test_connected() -> None:
    msg = tw.parse('{"event": "connected", "protocol": "Call", "version": "1.0.0"}')
    assert msg == tw.Connected("Call", "1.0.0")


def test_start() -> None:
    msg = tw.parse(frame(start()))
    assert msg == tw.Start(
        stream_sid=SID,
        call_sid="CA456",
        account_sid="AC123",
        media_format=tw.MediaFormat("audio/x-mulaw", 8000, 1),
        tracks=("inbound",),
        custom_parameters={"caller": "+15550100"},
        sequence_number=1,
    )


def test_start_with_the_sid_only_inside_and_no_parameters() -> None:
    obj = start()
    del obj["streamSid"], obj["start"]["customParameters"]
    msg = tw.parse(frame(obj))
    assert isinstance(msg, tw.Start)
    assert msg.stream_sid == SID and msg.custom_parameters == {}


def test_media_as_text_and_as_bytes() -> None:
    for data in (frame(media()), frame(media()).encode()):
        msg = tw.parse(data)
        assert msg == tw.Media(SID, AUDIO, "inbound", 2, 5, 3)


def test_media_numbers_may_be_json_numbers() -> None:
    obj = media()
    obj["media"] |= {"chunk": 7, "timestamp": 140}
    msg = tw.parse(frame(obj))
    assert isinstance(msg, tw.Media) and (msg.chunk, msg.timestamp) == (7, 140)


def test_dtmf() -> None:
    obj = {
        "event": "dtmf",
        "streamSid": SID,
        "sequenceNumber": "5",
        "dtmf": {"track": "inbound_track", "digit": "#"},
    }
    assert tw.parse(frame(obj)) == tw.Dtmf(SID, "#", "inbound_track", 5)


def test_mark() -> None:
    obj = {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "resp_1"}}
    assert tw.parse(frame(obj)) == tw.Mark(SID, "resp_1", 4)


def test_stop() -> None:
    obj = {
        "event": "stop",
        "sequenceNumber": "9",
        "streamSid": SID,
        "stop": {"accountSid": "AC123", "callSid": "CA456"},
    }
    assert tw.parse(frame(obj)) == tw.Stop(SID, "CA456", "AC123", 9)
    assert tw.parse(frame({"event": "stop", "streamSid": SID})) == tw.Stop(SID)


# ------------------------------------------------------------------ malformed input


@pytest.mark.parametrize(
    "data",
    ["{not json", "", "[1, 2]", '"media"', "null", b"\xff\xfe{}", "[" * 100_000],
)
def test_not_a_json_object(data: str | bytes) -> None:
    assert error_of(data).code == "invalid_json"


def test_event_missing_wrong_type_or_unknown() -> None:
    assert error_of('{"streamSid": "MZ1"}').code == "missing_field"
    assert error_of('{"event": 3}').code == "invalid_field"
    error = error_of('{"event": "transcription"}')
    assert error.code == "unknown_event" and "transcription" in str(error)


@pytest.mark.parametrize("kind", ["media", "dtmf", "mark", "stop"])
def test_missing_stream_sid(kind: str) -> None:
    obj = {
        "event": kind,
        "media": {"payload": ""},
        "dtmf": {"digit": "1"},
        "mark": {"name": "m"},
    }
    error = error_of(frame(obj))
    assert (error.code, error.param) == ("missing_field", "streamSid")
    assert error_of(frame(obj | {"streamSid": ""})).code == "missing_field"
    assert error_of(frame(obj | {"streamSid": 42})).code == "invalid_field"


def test_start_without_stream_sid_or_with_two_different_ones() -> None:
    obj = start()
    del obj["streamSid"], obj["start"]["streamSid"]
    assert error_of(frame(obj)).param == "streamSid"
    obj = start()
    obj["streamSid"] = "MZother"
    assert error_of(frame(obj)).code == "invalid_field"


@pytest.mark.parametrize(
    "fmt",
    [
        {"encoding": "audio/l16"},
        {"encoding": None},
        {"sampleRate": 16000},
        {"sampleRate": None},
        {"channels": 2},
    ],
)
def test_start_with_an_unsupported_media_format(fmt: dict[str, Any]) -> None:
    error = error_of(frame(start(**fmt)))
    assert error.code == "unsupported_media_format"
    assert "audio/x-mulaw" in str(error)


def test_start_with_malformed_parts() -> None:
    obj = start()
    del obj["start"]["mediaFormat"]
    assert error_of(frame(obj)).code == "missing_field"
    obj = start()
    obj["start"] = "yes"
    assert error_of(frame(obj)).code == "invalid_field"
    assert error_of(frame(start(sampleRate="eight thousand"))).code == "invalid_field"
    obj = start()
    obj["start"]["customParameters"] = {"n": 1}
    assert error_of(frame(obj)).param == "start.customParameters"
    obj = start()
    obj["start"]["tracks"] = "inbound"
    assert error_of(frame(obj)).param == "start.tracks"


@pytest.mark.parametrize("payload", ["not base64!", "AAE", "AA==AA==", "AA AA", 1234])
def test_media_with_a_bad_payload(payload: Any) -> None:
    error = error_of(frame(media(payload)))
    assert (error.code, error.param) == ("invalid_audio", "media.payload")


def test_media_with_missing_or_malformed_parts() -> None:
    obj = media()
    del obj["media"]["payload"]
    assert error_of(frame(obj)).code == "missing_field"
    assert error_of(frame({"event": "media", "streamSid": SID})).code == "missing_field"
    assert isinstance(tw.parse(frame(media(extra="ignored"))), tw.Media)  # unknown keys: fine
    obj = media()
    obj["media"]["chunk"] = "-1"
    assert error_of(frame(obj)).param == "media.chunk"
    obj = media()
    obj["media"]["timestamp"] = True
    assert error_of(frame(obj)).param == "media.timestamp"
    assert error_of(frame(media(sequenceNumber="3.5"))).param == "sequenceNumber"


def test_dtmf_and_mark_with_bad_fields() -> None:
    base = {"event": "dtmf", "streamSid": SID}
    assert error_of(frame(base | {"dtmf": {}})).code == "missing_field"
    assert error_of(frame(base | {"dtmf": {"digit": "12"}})).code == "invalid_field"
    assert error_of(frame(base | {"dtmf": {"digit": 1}})).code == "invalid_field"
    base = {"event": "mark", "streamSid": SID}
    assert error_of(frame(base | {"mark": {}})).code == "missing_field"
    assert error_of(frame(base | {"mark": {"name": ["a"]}})).code == "invalid_field"
    assert error_of(frame(base | {"mark": []})).code == "invalid_field"


# ------------------------------------------------------------------ server → Twilio


def test_outbound_media() -> None:
    out = json.loads(tw.media(SID, AUDIO))
    assert out == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": base64.b64encode(AUDIO).decode()},
    }
    assert len(base64.b64decode(out["media"]["payload"])) == 160


def test_outbound_mark_and_clear() -> None:
    assert json.loads(tw.mark(SID, "resp_1")) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "resp_1"},
    }
    assert json.loads(tw.clear(SID)) == {"event": "clear", "streamSid": SID}


def test_outbound_messages_need_a_stream_sid_and_a_mark_name() -> None:
    with pytest.raises(ValueError):
        tw.media("", AUDIO)
    with pytest.raises(ValueError):
        tw.clear("")
    with pytest.raises(ValueError):
        tw.mark(SID, "")


def test_outbound_media_round_trips_through_parse() -> None:
    echoed = json.loads(tw.media(SID, AUDIO)) | {"sequenceNumber": "8"}
    msg = tw.parse(frame(echoed))
    assert isinstance(msg, tw.Media) and msg.payload == AUDIO and msg.track is None
