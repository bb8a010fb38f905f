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
    """The caller's words so far, while they are still speaking (streaming ASR)."""

    item_id: str
    transcript: str


@dataclass(slots=True)
class ReplyStarted:
    response_id: str
    item: Item


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
class ReplyDone:
    """A reply ended; ``status`` is ``completed``, ``cancelled`` or ``failed``."""

    response_id: str
    item: Item | None
    status: str
    reason: str | None = None
    output_started: bool = False


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
class SessionError:
    message: str
    code: str = "server_error"
    type: str = "server_error"
    event_id: str | None = None
    param: str | None = None


@dataclass(slots=True)
class SessionClosed:
    reason: str


SessionEvent = (
    SpeechStarted
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
    | SessionError
    | SessionClosed
)
