"""The few typed events a session emits to its transport adapter.

A transport adapter reads them from :meth:`pipeline.session.Session.next_event` and renders each on
its wire (Realtime JSON events, RTP, Twilio media messages). They carry ids and millisecond
positions, never wire formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .context import Item


@dataclass(slots=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclass(slots=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(slots=True)
class InputCommitted:
    item_id: str
    previous_item_id: str | None


@dataclass(slots=True)
class InputCleared:
    pass


@dataclass(slots=True)
class ItemAdded:
    """An item joined the conversation (``done`` when its content is final)."""

    item: Item
    previous_item_id: str | None
    done: bool


@dataclass(slots=True)
class UserTranscript:
    item_id: str
    transcript: str


@dataclass(slots=True)
class InterimTranscript:
    """The caller's words so far, while they are still speaking (streaming ASR). ``delta``: the
    words past those of the previous interim result of this turn, to append to them (empty when
    the recognizer revised earlier words instead: text once given is never taken back)."""

    item_id: str
    transcript: str
    delta: str = ""


@dataclass(slots=True, frozen=True)
class ResponseInfo:
    """How a response was asked for, as the transport reports it back."""

    out_of_band: bool = False
    """``conversation: "none"``: nothing of it joins the conversation."""
    text_only: bool = False
    metadata: dict[str, str] | None = None
    max_output_tokens: int | None = None
    """None: the session's."""
    voice: str | None = None
    """The voice name the client asked for in ``response.create`` (None: the session's)."""
    scripted: bool = False
    """Its words were given, not generated (the apology after a failed reply)."""


@dataclass(slots=True)
class ReplyStarted:
    """A response began. ``item`` is its assistant message, announced by the transport once it
    has words or audio (a reply may be only a function call)."""

    response_id: str
    item: Item
    info: ResponseInfo = ResponseInfo()


@dataclass(slots=True)
class ReplyAudio:
    response_id: str
    item_id: str
    audio: np.ndarray  # int16 mono at ``rate``
    rate: int
    """The reply's output rate, fixed when it started (a format change applies to the next)."""


@dataclass(slots=True)
class ReplyText:
    """Transcript of the reply, sent when the audio of that text starts playing."""

    response_id: str
    item_id: str
    delta: str


@dataclass(slots=True)
class CallStarted:
    """The reply calls a function: its ``function_call`` item (arguments follow)."""

    response_id: str
    item: Item


@dataclass(slots=True)
class CallArguments:
    response_id: str
    item_id: str
    call_id: str
    delta: str


@dataclass(slots=True)
class CallDone:
    """A function call's arguments are complete (``item.status`` ``completed``), or the reply
    ended before they were (``incomplete``: it must not be run)."""

    response_id: str
    item: Item


@dataclass(slots=True, frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclass(slots=True)
class ReplyDone:
    """A reply ended; ``status`` is ``completed``, ``incomplete`` (``reason``
    ``max_output_tokens``), ``cancelled`` or ``failed``. ``calls``: its function calls, after
    the message ``item`` (None once the client deleted it)."""

    response_id: str
    item: Item | None
    status: str
    reason: str | None = None
    output_started: bool = False
    calls: list[Item] = field(default_factory=list)
    usage: Usage | None = None


@dataclass(slots=True)
class ItemTruncated:
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(slots=True)
class ItemDeleted:
    item_id: str


@dataclass(slots=True)
class TurnMetrics:
    """Per-turn timings in ms after the end of the caller's speech (None: did not happen)."""

    response_id: str
    item_id: str | None
    marks: dict[str, float | None] = field(default_factory=dict)


@dataclass(slots=True)
class ReplyHeld:
    """The agent's voice was held (``held``: the caller may be cutting in) or let go on (not
    ``held``: it was not a real interruption). Between the two nothing of the reply is sent; a
    client that plays audio it received ahead may silence it at once."""

    response_id: str
    held: bool


@dataclass(slots=True)
class SessionError:
    message: str
    code: str = "server_error"
    type: str = "server_error"
    event_id: str | None = None
    param: str | None = None


@dataclass(slots=True)
class SessionClosed:
    reason: str


@dataclass(slots=True)
class TranscriptionFailed:
    """The transcription of a user item failed (its transcript stays empty)."""

    item_id: str
    message: str
    code: str = "asr_failed"


@dataclass(slots=True)
class IdleTimeout:
    """The caller said nothing for ``idle_timeout_ms``: the silence from ``audio_start_ms`` to
    ``audio_end_ms`` (input audio time) becomes the user item ``item_id``, and a reply follows."""

    item_id: str
    audio_start_ms: int
    audio_end_ms: int


@dataclass(slots=True)
class DtmfReceived:
    """The caller pressed a keypad key (``digit``: 0-9, *, #, A-D) at ``received_at`` (UTC Unix
    seconds), on a phone call (Twilio, SIP). What it does to the conversation: ``dtmf.py``."""

    digit: str
    received_at: int


SessionEvent = (
    CallStarted
    | CallArguments
    | CallDone
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | InputCleared
    | ItemAdded
    | UserTranscript
    | InterimTranscript
    | ReplyStarted
    | ReplyAudio
    | ReplyText
    | ReplyDone
    | ItemTruncated
    | ItemDeleted
    | TurnMetrics
    | ReplyHeld
    | SessionError
    | SessionClosed
    | TranscriptionFailed
    | IdleTimeout
    | DtmfReceived
)
