"""The seam between a session and an end-to-end realtime model: engine names, settings, the
typed events every upstream codec produces, and what a session asks of a remote engine.

A codec (``openai_realtime.py``, ``gemini_live.py``) turns the upstream's text frames into the
events below and the session's requests into frames; it does no I/O. The relay
(``relay.py``) carries the frames and maps the events onto the session.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..context import Item
from ..engines.tools import ToolSpec
from ..errors import EngineError, ProtocolError

CASCADE = "cascade"
OPENAI_REALTIME = "openai-realtime"
GEMINI_LIVE = "gemini-live"
ENGINES = (CASCADE, OPENAI_REALTIME, GEMINI_LIVE)
"""A session's engine: the local cascade (VAD → ASR → LLM → TTS) or a remote realtime model."""

TURN_DETECTION = ("upstream", "server")
"""Who decides that the caller's turn is over on a remote engine: the upstream model's own
voice activity detection, or this server's listening (VAD, turn-taking, end-of-turn judge)."""


class UpstreamFailure(EngineError):
    """The remote engine failed: unreachable, a refused key, a dropped connection, a message
    that is not its protocol, a stall (``retryable`` where trying again may work)."""

    def __init__(self, message: str, *, engine: str, retryable: bool = True) -> None:
        super().__init__(message, engine=engine, retryable=retryable)


def check_engine(name: Any, param: str) -> str:
    """An engine name, or a :class:`ProtocolError` naming ``param`` and the value."""
    if isinstance(name, str) and name in ENGINES:
        return name
    raise ProtocolError(
        f"{param}: unknown engine {name!r}; the engines are {', '.join(ENGINES)}",
        code="invalid_value",
        param=param,
    )


@dataclass(slots=True)
class UpstreamSettings:
    """One remote engine: where it is, how to authenticate, and its bounds."""

    url: str
    """The WebSocket URL (``wss://api.openai.com/v1/realtime``, Gemini's
    ``wss://…/BidiGenerateContent``)."""
    key: str = ""
    """The API key; sent upstream only, never to a client."""
    model: str = ""
    voice: str = ""
    """The upstream's voice name; empty: its default."""
    turn_detection: str = "upstream"
    """``upstream`` or ``server`` (:data:`TURN_DETECTION`)."""
    transcription_model: str = ""
    """OpenAI: the input transcription model to ask for; empty: the upstream's default."""
    g711_passthrough: bool = True
    """A phone call's G.711 (the session's ``wire_format``) is relayed as is, neither decoded
    nor resampled, where the upstream accepts it (OpenAI); False: as 24 kHz PCM."""
    # Timeouts
    connect_timeout_s: float = 10.0
    """Connecting, and the upstream's first event (``session.created``/``setupComplete``)."""
    first_audio_timeout_s: float = 10.0
    """From asking for a reply to its first event."""
    gap_timeout_s: float = 5.0
    """Between two events of a reply in progress."""
    # Limits
    max_message_bytes: int = 8 << 20
    """The largest upstream message read; a larger one ends the connection."""
    max_queued_events: int = 4096
    """Upstream events of one reply waiting to be played; past it the reply fails."""


@dataclass(slots=True)
class HandoffSettings:
    """The remote engines a session may use, and what happens when one fails."""

    upstreams: dict[str, UpstreamSettings] = field(default_factory=dict)
    """By engine name (:data:`OPENAI_REALTIME`, :data:`GEMINI_LIVE`)."""
    fallback: bool = True
    """On an upstream failure the session goes on with the local cascade, which answers the
    turn left unanswered; False: the caller hears ``notice`` and the session ends."""
    notice: str = "Sorry, I have lost the connection to my voice service. Goodbye."
    """Said (by the local TTS) when an upstream fails and ``fallback`` is off."""


# ---------------------------------------------------------------- upstream events


@dataclass(slots=True)
class Ready:
    """The upstream has the session and the conversation so far (OpenAI: the
    ``session.updated`` answering the setup, sent after the history; Gemini: ``setupComplete``)."""


@dataclass(slots=True)
class SpeechStarted:
    """The upstream's VAD heard the caller begin (a barge-in when the agent speaks)."""

    item_id: str
    audio_start_ms: int = 0


@dataclass(slots=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int = 0


@dataclass(slots=True)
class InputCommitted:
    """The caller's turn became the user item ``item_id``."""

    item_id: str


@dataclass(slots=True)
class UserTranscript:
    item_id: str
    text: str
    final: bool = True


@dataclass(slots=True)
class ResponseStarted:
    response_id: str


@dataclass(slots=True)
class AudioDelta:
    response_id: str
    item_id: str
    audio: np.ndarray
    """int16 mono at the codec's ``output_rate``."""


@dataclass(slots=True)
class TextDelta:
    """The words of the reply (the transcript of its audio)."""

    response_id: str
    item_id: str
    delta: str


@dataclass(slots=True)
class CallDelta:
    """A piece of a function call: the first names it (empty ``arguments`` allowed)."""

    response_id: str
    index: int
    call_id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ResponseDone:
    response_id: str
    status: str = "completed"
    """``completed``, ``cancelled``, ``incomplete`` or ``failed``."""
    reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class Interrupted:
    """The upstream stopped its reply because the caller spoke (Gemini's ``interrupted``)."""

    response_id: str


@dataclass(slots=True)
class UpstreamError:
    """An ``error`` the upstream reported; the connection goes on."""

    message: str
    code: str = ""


@dataclass(slots=True)
class Unknown:
    """A well-formed message of a type this codec does not know."""

    kind: str


@dataclass(slots=True)
class Resumption:
    """A handle to resume the upstream session with after a reconnection (Gemini)."""

    handle: str


UpstreamEvent = (
    Ready
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | UserTranscript
    | ResponseStarted
    | AudioDelta
    | TextDelta
    | CallDelta
    | ResponseDone
    | Interrupted
    | UpstreamError
    | Unknown
    | Resumption
)


# ---------------------------------------------------------------- what the relay asks of a codec


@dataclass(slots=True)
class SessionSetup:
    """What the upstream is told when the engine starts: the conversation so far included."""

    instructions: str
    tools: Sequence[ToolSpec] = ()
    tool_choice: str = "auto"
    """``auto``, ``none``, ``required`` or a tool's name."""
    history: Sequence[Item] = ()
    upstream_vad: bool = True
    wire_format: str = ""
    """The caller's G.711 format (``SessionSettings.wire_format``); empty: PCM."""


class UpstreamCodec(Protocol):
    """One upstream protocol, sans I/O. Every method returns the text frames to send."""

    input_rate: int
    output_rate: int

    def url(self) -> str: ...

    def headers(self) -> dict[str, str]: ...

    def setup(self, setup: SessionSetup) -> list[str]: ...

    def audio(self, pcm: bytes) -> list[str]:
        """Caller audio, int16 little-endian mono at ``input_rate``."""
        ...

    def wire(self, payload: bytes) -> list[str] | None:
        """The caller's G.711 bytes (the setup's ``wire_format``) sent as they came; None when
        the upstream was not set up for them (the relay decodes and resamples instead)."""
        ...

    def commit(self) -> list[str]:
        """End the caller's turn (this server's turn detection)."""
        ...

    def respond(self, instructions: str | None, tool_choice: str | None = None) -> list[str]:
        """Ask for a reply; None: the session's instructions and tool choice."""
        ...

    def cancel(self, response_id: str) -> list[str]: ...

    def truncate(self, item_id: str, audio_ms: int) -> list[str]: ...

    def add_item(self, item: Item) -> list[str]:
        """A client's item or a tool's output joins the upstream's conversation."""
        ...

    def receive(self, data: str | bytes) -> list[UpstreamEvent]:
        """The events of one upstream frame; raises :class:`UpstreamFailure` on a frame
        that is not the protocol at all."""
        ...


class RemoteEngine(Protocol):
    """What a session asks of the engine that replaces its replying (``relay.Relay``)."""

    name: str

    @property
    def listens(self) -> bool:
        """The upstream detects turns: the caller's audio goes to it, not to the listener."""
        ...

    async def run(self) -> None: ...

    def close(self) -> None: ...

    def configure(self) -> None:
        """The session's settings changed: the upstream is told (instructions, tools)."""
        ...

    def append(self, samples: np.ndarray, rate: int, wire: bytes | None = None) -> None:
        """Caller audio; ``wire``: the same as the G.711 bytes it came as (a phone call)."""
        ...

    def commit_turn(self, audio: np.ndarray) -> None:
        """This server ended the caller's turn: its audio (16 kHz) goes upstream."""
        ...

    def reply(self, *args: Any, **kwargs: Any) -> Any:
        """A reply object with the surface of :class:`pipeline.reply.Reply`."""
        ...
