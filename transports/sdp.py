"""Checking an SDP offer before it reaches the WebRTC stack (sans-I/O, RFC 8866 shape only),
and reading and amending the answer.

aiortc parses the full SDP; this only decides, with a clear message, whether an offer is one we
can answer: text SDP, a session version line, no ``mid`` twice, an audio section that can send
to us, and a DTLS fingerprint. Of aiortc's answer it reads the codec the call sends with and
asks the caller for a frame length (``a=ptime``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ProtocolError

MAX_SDP_BYTES = 64 * 1024


@dataclass(slots=True, frozen=True)
class OfferSummary:
    media: tuple[str, ...]
    """The kind of each m= section, in order (``audio``, ``video``, ``application``)."""
    has_data_channel: bool


def check_offer(sdp: str) -> OfferSummary:
    """Raise :class:`ProtocolError` (``code`` = ``invalid_sdp`` or ``no_audio``) for an offer
    we cannot answer; return what it contains otherwise."""
    if len(sdp.encode(errors="surrogatepass")) > MAX_SDP_BYTES:  # (text from bad bytes too)
        raise ProtocolError(f"SDP offer larger than {MAX_SDP_BYTES} bytes", code="invalid_sdp")
    lines = [line.strip() for line in sdp.strip().splitlines() if line.strip()]
    if not lines or lines[0] != "v=0":
        raise ProtocolError("not an SDP offer: it must start with 'v=0'", code="invalid_sdp")
    for line in lines:
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            raise ProtocolError(f"malformed SDP line {line[:40]!r}", code="invalid_sdp")
    mids = [line[6:] for line in lines if line.startswith("a=mid:")]
    if len(set(mids)) != len(mids):  # aiortc fails on it in a task of its own (AttributeError)
        raise ProtocolError("two media sections of the offer have the same mid", code="invalid_sdp")
    media: list[str] = []
    audio_directions: list[str] = []
    for line in lines:
        if line.startswith("m="):
            fields = line[2:].split()
            if len(fields) < 4:
                raise ProtocolError(f"malformed media line {line[:60]!r}", code="invalid_sdp")
            media.append(fields[0])
            if fields[0] == "audio":
                audio_directions.append("sendrecv")
        elif (
            media
            and media[-1] == "audio"
            and line in ("a=recvonly", "a=inactive", "a=sendonly", "a=sendrecv")
        ):
            audio_directions[-1] = line[2:]
    if "audio" not in media:
        raise ProtocolError("the offer has no audio section", code="no_audio")
    if not any(d in ("sendrecv", "sendonly") for d in audio_directions):
        raise ProtocolError(
            "the offer's audio does not send: nothing to listen to", code="no_audio"
        )
    if not any(line.startswith("a=fingerprint:") for line in lines):
        # aiortc answers such an offer, then fails in a task of its own (AssertionError)
        raise ProtocolError(
            "the offer has no DTLS fingerprint (a=fingerprint): a WebRTC call cannot connect"
            " without one",
            code="invalid_sdp",
        )
    return OfferSummary(tuple(media), "application" in media)


def audio_codec(sdp: str) -> str | None:
    """The codec an SDP's first audio section sends with (its first payload type), lower case."""
    lines = sdp.splitlines()
    for k, line in enumerate(lines):
        if line.startswith("m=audio "):
            fields = line.split()
            if len(fields) < 4:
                return None
            for attribute in lines[k + 1 :]:
                if attribute.startswith("m="):
                    break
                if attribute.startswith(f"a=rtpmap:{fields[3]} "):
                    return attribute.split(" ", 1)[1].split("/")[0].lower()
            return None
    return None


def with_ptime(sdp: str, ms: int) -> str:
    """``sdp`` asking for ``ms`` of audio per packet (``a=ptime``, RFC 4566) at the end of its
    first audio section: a browser's Opus encoder then cuts frames that long."""
    lines = sdp.splitlines()
    start = next((k for k, line in enumerate(lines) if line.startswith("m=audio ")), None)
    if start is None:
        return sdp
    end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("m=")), len(lines))
    kept = [line for line in lines[start:end] if not line.startswith("a=ptime:")]
    lines[start:end] = [*kept, f"a=ptime:{ms}"]
    return "\r\n".join(lines) + "\r\n"
