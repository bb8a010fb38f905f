"""SIP on a byte stream (``transports/sip/stream.py``): messages cut out of TCP segments by
their ``Content-Length``, with bytes only — messages captured from baresip and sipp, split
everywhere, run together, and the streams that cannot be framed."""

from __future__ import annotations

from pathlib import Path

import pytest

from transports.sip.message import Request, parse
from transports.sip.stream import Framed, Framer, Ping, Unframeable, content_length

CAPTURES = Path(__file__).parent / "sip" / "captures"
INVITE = (CAPTURES / "baresip_invite.sip").read_bytes()
BYE = (CAPTURES / "baresip_bye.sip").read_bytes()
PCMA_INVITE = (CAPTURES / "sipp_invite_pcma.sip").read_bytes()


def framed(events: list[Framed | Ping | Unframeable]) -> list[bytes]:
    assert all(isinstance(e, Framed) for e in events), events
    return [e.data for e in events if isinstance(e, Framed)]


def options(extra: str = "Content-Length: 0\r\n", body: bytes = b"") -> bytes:
    return (
        "OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-1\r\n"
        "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:agent@127.0.0.1>\r\n"
        "Call-ID: c1\r\nCSeq: 1 OPTIONS\r\n" + extra + "\r\n"
    ).encode() + body


def test_the_captures_have_a_body_to_frame() -> None:
    for capture in (INVITE, PCMA_INVITE):
        head, _, body = capture.partition(b"\r\n\r\n")
        assert content_length(head + b"\r\n\r\n", 65_000) == len(body) > 100


@pytest.mark.parametrize("capture", [INVITE, PCMA_INVITE, BYE], ids=["invite", "pcma", "bye"])
def test_split_at_every_byte_boundary(capture: bytes) -> None:
    for cut in range(len(capture) + 1):
        framer = Framer()
        first = framer.feed(capture[:cut])
        second = framer.feed(capture[cut:])
        assert first + second == [Framed(capture)], cut
        assert framer.buffered == 0


def test_one_byte_at_a_time_then_parsed() -> None:
    framer = Framer()
    events = [e for i in range(len(INVITE)) for e in framer.feed(INVITE[i : i + 1])]
    (data,) = framed(events)
    message = parse(data)
    assert isinstance(message, Request) and message.method == "INVITE"
    assert message.body.startswith(b"v=0") and len(message.body) == 345


def test_messages_run_together_in_one_segment() -> None:
    framer = Framer()
    stream = INVITE + BYE + INVITE
    events = framer.feed(stream[: len(INVITE) + len(BYE) + 10])
    assert framed(events) == [INVITE, BYE]
    assert framer.buffered == 10  # the third message's start, held
    assert framed(framer.feed(stream[len(INVITE) + len(BYE) + 10 :])) == [INVITE]


def test_keep_alives_between_messages() -> None:
    framer = Framer()
    events = framer.feed(b"\r\n\r\n" + BYE + b"\r\n" + BYE + b"\r\n\r")
    assert events == [Ping(), Framed(BYE), Framed(BYE)]
    assert framer.feed(b"\n") == [Ping()]  # the ping's last byte came late
    # a lone CRLF (a keep-alive's answer) before a message is skipped
    assert framer.feed(b"\r\n") == [] and framer.feed(BYE) == [Framed(BYE)]


def test_compact_content_length_and_zero_body() -> None:
    message = options("l: 5\r\n", b"hello")
    assert framed(Framer().feed(message + options())) == [message, options()]


def test_a_message_without_content_length_cannot_be_framed() -> None:
    framer = Framer()
    bad = options(extra="")
    events = framer.feed(options() + bad + options())
    assert events[0] == Framed(options())
    (unframeable,) = events[1:]
    assert isinstance(unframeable, Unframeable)
    assert unframeable.error.status == 400 and "Content-Length" in str(unframeable.error)
    assert unframeable.head == bad  # (no body: the header block is all of it)
    assert framer.broken and framer.feed(options()) == []  # nothing more is taken


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("Content-Length: 70000\r\n", 413),
        ("Content-Length: 99999999999999\r\n", 400),
        ("Content-Length: -1\r\n", 400),
        ("Content-Length: ten\r\n", 400),
        ("Content-Length: 0\r\nl: 4\r\n", 400),
    ],
)
def test_a_bad_content_length_cannot_be_framed(header: str, status: int) -> None:
    (event,) = Framer().feed(options(header))
    assert isinstance(event, Unframeable) and event.error.status == status, event
    assert event.head.startswith(b"OPTIONS ")


def test_the_same_length_twice_is_taken() -> None:
    message = options("Content-Length: 2\r\nl: 2\r\n", b"hi")
    assert framed(Framer().feed(message)) == [message]


def test_a_header_block_past_the_limit_closes() -> None:
    framer = Framer(max_head=1024)
    events = framer.feed(b"INVITE sip:a@b SIP/2.0\r\n" + b"X-Pad: " + b"a" * 900)
    assert events == []  # under the limit so far: wait for more
    (event,) = framer.feed(b"a" * 200)
    assert isinstance(event, Unframeable) and event.error.status == 413
    assert event.head == b"" and framer.buffered == 0


def test_a_whole_header_block_past_the_limit_closes() -> None:
    (event,) = Framer(max_head=200).feed(INVITE)
    assert isinstance(event, Unframeable) and event.error.status == 413


def test_held_bytes_are_bounded() -> None:
    """At most one message's header block and body are held, whatever arrives."""
    framer = Framer(max_head=512, max_body=1024)
    head = options("Content-Length: 1024\r\n")
    assert framer.feed(head + b"x" * 1000) == []
    assert framer.buffered == len(head) + 1000
    (event,) = framer.feed(b"x" * 24 + b"extra")
    assert event == Framed(head + b"x" * 1024) and framer.buffered == 5
