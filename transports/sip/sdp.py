"""SDP offer/answer for a telephone audio call (RFC 3264, RFC 8866), sans-I/O.

:func:`parse_offer` reads what an offer asks for: where to send RTP (``c=`` and the audio
``m=`` line), the payload types it offers, ``telephone-event`` (RFC 4733) and the direction
(``sendonly`` / ``inactive`` put us on hold). :func:`choose` picks the first offered codec we
speak (PCMU, PCMA, G722: ``codec.py``) or raises :class:`~.message.SipError` with status 488.
:func:`answer` and :func:`offer` write our side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .codec import CLOCK_RATE, Codec
from .codec import CODECS as FORMATS
from .message import SipError

MAX_SDP_BYTES = 16 * 1024
CODECS = {pt: c.name for pt, c in FORMATS.items()}
"""Static payload types we speak, by number (RFC 3551)."""
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_FLIP = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly"}


@dataclass(slots=True)
class Offer:
    address: str
    port: int
    payloads: list[int]
    rtpmap: dict[int, str] = field(default_factory=dict)
    """``payload type → encoding/rate`` (``"PCMU/8000"``, ``"telephone-event/8000"``)."""
    direction: str = "sendrecv"
    ptime: int | None = None

    @property
    def telephone_event(self) -> int | None:
        for pt in self.payloads:
            if self.rtpmap.get(pt, "").lower() == "telephone-event/8000":
                return pt
        return None

    @property
    def on_hold(self) -> bool:
        """The peer does not want our audio (``sendonly``/``inactive``, or a 0.0.0.0 address)."""
        return self.direction in ("sendonly", "inactive") or self.address == "0.0.0.0"


@dataclass(slots=True, frozen=True)
class Media:
    """What we agreed on: the codec and the DTMF payload type (None: no RFC 4733)."""

    payload: int
    telephone_event: int | None

    @property
    def codec(self) -> str:
        return CODECS[self.payload]

    @property
    def format(self) -> Codec:
        return FORMATS[self.payload]


def parse_offer(body: bytes) -> Offer:
    """The first audio stream of an SDP body; raises :class:`SipError` (400, or 488 when it has
    no audio we can use)."""
    if len(body) > MAX_SDP_BYTES:
        raise SipError(f"SDP larger than {MAX_SDP_BYTES} bytes")
    try:
        lines = [line.strip() for line in body.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise SipError("SDP is not UTF-8") from exc
    if not lines or lines[0] != "v=0":
        raise SipError("SDP does not begin with v=0")
    session_address: str | None = None
    offer: Offer | None = None
    in_audio = False
    for line in lines[1:]:
        kind, eq, value = line.partition("=")
        if not eq or len(kind) != 1:
            raise SipError(f"malformed SDP line {line!r:.60}")
        if kind == "m":
            if offer is not None:
                in_audio = False  # only the first audio stream counts
                continue
            in_audio = value.startswith("audio ")
            if in_audio:
                offer = _media_line(value, session_address)
        elif kind == "c":
            address = _connection(value)
            if offer is None:
                session_address = address
            elif in_audio:
                offer.address = address
        elif kind == "a" and (in_audio or offer is None):
            _attribute(offer, value, in_audio)
    if offer is None:
        raise SipError("SDP offers no audio stream", status=488, code="no_audio")
    if not offer.address:
        raise SipError("SDP has no connection address (c=) for its audio")
    return offer


def _media_line(value: str, address: str | None) -> Offer:
    parts = value.split()
    if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
        raise SipError(f"malformed m= line {value!r:.60}")
    if parts[2] not in ("RTP/AVP", "RTP/AVPF"):
        raise SipError(f"media transport {parts[2]!r:.20} not supported", status=488)
    port = int(parts[1].split("/")[0])
    if port > 65535:
        raise SipError(f"bad port in m= line {value!r:.60}")
    payloads = [int(p) for p in parts[3:] if p.isdigit() and int(p) < 128]
    rtpmap = {pt: name for pt, name in CODECS.items() if pt in payloads}
    rtpmap = {pt: f"{name}/{CLOCK_RATE}" for pt, name in rtpmap.items()}
    return Offer(address=address or "", port=port, payloads=payloads, rtpmap=rtpmap)


def _connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SipError(f"malformed c= line {value!r:.60}")
    return parts[2].split("/")[0]


def _attribute(offer: Offer | None, value: str, in_audio: bool) -> None:
    name, _, rest = value.partition(":")
    if name in DIRECTIONS:
        if offer is not None and in_audio:
            offer.direction = name
        return
    if offer is None:
        return
    if name == "rtpmap":
        pt, _, encoding = rest.partition(" ")
        if pt.isdigit():
            offer.rtpmap[int(pt)] = encoding.strip()
    elif name == "ptime" and rest.strip().isdigit():
        offer.ptime = int(rest.strip())


def choose(offer: Offer) -> Media:
    """The first offered codec we speak; raises :class:`SipError` 488 when there is none."""
    for pt in offer.payloads:
        name = offer.rtpmap.get(pt, "").upper()
        if pt in CODECS and name in ("", f"{CODECS[pt]}/{CLOCK_RATE}"):
            return Media(pt, offer.telephone_event)
    raise SipError(
        f"no usable codec in the offer (payloads {offer.payloads[:16]}; we speak PCMU, PCMA, G722)",
        status=488,
        code="no_codec",
    )


def answer(
    offer: Offer, media: Media, address: str, port: int, session_id: int, version: int = 1
) -> bytes:
    """Our answer: one audio stream with the chosen codec (and telephone-event if offered), the
    offer's direction mirrored."""
    direction = "inactive" if offer.direction == "inactive" else _FLIP[offer.direction]
    return _sdp(media, address, port, session_id, version, direction)


def offer(
    address: str,
    port: int,
    session_id: int,
    version: int = 1,
    codecs: tuple[int, ...] = (9, 0, 8),
) -> bytes:
    """Our offer for an outbound call: ``codecs`` (payload types, by default G.722 first — the
    wide-band one — then PCMU and PCMA), telephone-event 101."""
    ip = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0",
        f"o=voice {session_id} {version} IN {ip} {address}",
        "s=voice",
        f"c=IN {ip} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(map(str, codecs))} 101",
        *(f"a=rtpmap:{pt} {CODECS[pt]}/{CLOCK_RATE}" for pt in codecs),
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def _sdp(media: Media, address: str, port: int, sid: int, version: int, direction: str) -> bytes:
    ip = "IP6" if ":" in address else "IP4"
    payloads = [str(media.payload)]
    attributes = [f"a=rtpmap:{media.payload} {media.codec}/8000"]
    if media.telephone_event is not None:
        te = media.telephone_event
        payloads.append(str(te))
        attributes += [f"a=rtpmap:{te} telephone-event/8000", f"a=fmtp:{te} 0-15"]
    lines = [
        "v=0",
        f"o=voice {sid} {version} IN {ip} {address}",
        "s=voice",
        f"c=IN {ip} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(payloads)}",
        *attributes,
        "a=ptime:20",
        f"a={direction}",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()
