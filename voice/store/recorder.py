"""One session's events → its records (a session observer, ``Session.observers``).

What is kept: every item as it joins the conversation and again once final (the caller's words
when transcribed; the agent's as heard, after a barge-in or a truncation; a function call once
its arguments are complete; a tool's output), deletions, truncations, each response's end and
status, per-turn metrics, errors, and the close. A reply in progress is written when it ends:
a crash loses at most the turn in progress. With ``record_audio``, both sides go to WAV files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline import messages as m
from pipeline.session import Session

from .audio import AGENT, CALLER
from .records import Kind, Record, item_fields
from .writer import SessionStore, now

log = logging.getLogger("voice.store")


class SessionRecorder:
    """Attach with ``SessionRecorder(store, session, "websocket")``; it adds itself to the
    session's observers (and input taps, when recording audio)."""

    def __init__(
        self,
        store: SessionStore,
        session: Session,
        transport: str,
        *,
        record_audio: bool = False,
        max_audio_s: float = 3600.0,
        clock: Callable[[], float] = now,
    ) -> None:
        self.store = store
        self.session_id = session.id
        self._clock = clock
        self._seq = 0
        self._out_of_band: set[str] = set()
        self._closed = False
        self._audio_left = dict.fromkeys((CALLER, AGENT), max_audio_s) if record_audio else {}
        store.open_session(session.id, transport, clock())
        session.observers.append(self)
        if record_audio:
            session.input_taps.append(self._caller_audio)

    @property
    def count(self) -> int:
        """Records made so far (written, queued, or dropped when the queue was full)."""
        return self._seq

    def __call__(self, session: Session, event: m.SessionEvent) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, session, event)

    def _write(self, kind: Kind, payload: dict[str, Any]) -> None:
        self.store.record(self.session_id, Record(self._seq, self._clock(), kind, payload))
        self._seq += 1

    # ------------------------------------------------------------ the conversation

    def _item_added(self, session: Session, event: m.ItemAdded) -> None:
        self._write(
            Kind.ITEM, {**item_fields(event.item), "previous_item_id": event.previous_item_id}
        )

    def _transcript(self, session: Session, event: m.UserTranscript) -> None:
        item = session.conversation.get(event.item_id)
        fields = item_fields(item) if item is not None else {"id": event.item_id}
        self._write(Kind.ITEM, {**fields, "text": event.transcript})

    def _reply_started(self, session: Session, event: m.ReplyStarted) -> None:
        if event.info.out_of_band:
            self._out_of_band.add(event.response_id)

    def _call_done(self, session: Session, event: m.CallDone) -> None:
        if event.response_id not in self._out_of_band:
            self._final_item(session, event.item)

    def _reply_done(self, session: Session, event: m.ReplyDone) -> None:
        out_of_band = event.response_id in self._out_of_band
        self._out_of_band.discard(event.response_id)
        item = event.item
        if item is not None and not out_of_band and (item.text or event.output_started):
            self._final_item(session, item)
        usage = event.usage
        payload: dict[str, Any] = {
            "response_id": event.response_id,
            "status": event.status,
            "reason": event.reason,
            "item_id": item.id if item is not None else None,
            "out_of_band": out_of_band,
            "calls": [call.id for call in event.calls],
            "usage": None
            if usage is None
            else {"input": usage.input_tokens, "output": usage.output_tokens},
        }
        if out_of_band and item is not None:
            payload["text"] = item.text
        self._write(Kind.RESPONSE_DONE, payload)

    def _final_item(self, session: Session, item: Any) -> None:
        """An assistant item now final; it goes after what precedes it in the conversation."""
        items = session.conversation.items
        index = next((i for i, x in enumerate(items) if x is item), None)
        previous = items[index - 1].id if index else None
        self._write(Kind.ITEM, {**item_fields(item), "previous_item_id": previous})

    def _truncated(self, session: Session, event: m.ItemTruncated) -> None:
        item = session.conversation.get(event.item_id)
        payload = {"item_id": event.item_id, "audio_end_ms": event.audio_end_ms}
        self._write(Kind.ITEM_TRUNCATED, {**payload, "text": item.text if item else ""})

    def _deleted(self, session: Session, event: m.ItemDeleted) -> None:
        self._write(Kind.ITEM_DELETED, {"item_id": event.item_id})

    # ------------------------------------------------------------ metrics, errors, the end

    def _metrics(self, session: Session, event: m.TurnMetrics) -> None:
        payload = {"response_id": event.response_id, "item_id": event.item_id}
        self._write(Kind.METRICS, {**payload, "metrics_ms": event.marks})

    def _error(self, session: Session, event: m.SessionError) -> None:
        self._write(Kind.ERROR, {"code": event.code, "type": event.type, "message": event.message})

    def _asr_failed(self, session: Session, event: m.TranscriptionFailed) -> None:
        payload = {"code": event.code, "message": event.message, "item_id": event.item_id}
        self._write(Kind.ERROR, payload)

    def _closed_event(self, session: Session, event: m.SessionClosed) -> None:
        self._closed = True
        self._write(Kind.CLOSED, {"reason": event.reason})

    # ------------------------------------------------------------ audio

    def _agent_audio(self, session: Session, event: m.ReplyAudio) -> None:
        self._audio(AGENT, event.audio, event.rate)

    def _caller_audio(self, samples: np.ndarray, rate: int) -> None:
        self._audio(CALLER, samples, rate)

    def _audio(self, side: str, samples: np.ndarray, rate: int) -> None:
        left = self._audio_left.get(side)
        if left is None or left <= 0 or self._closed:
            return
        self._audio_left[side] = left - len(samples) / rate
        if self._audio_left[side] <= 0:
            log.info(
                "session %s: %s audio past store.max_audio_s, no longer recorded",
                self.session_id,
                side,
            )
        self.store.record_audio(self.session_id, side, samples, rate)


_HANDLERS: dict[type, Callable[[SessionRecorder, Session, Any], None]] = {
    m.ItemAdded: SessionRecorder._item_added,
    m.UserTranscript: SessionRecorder._transcript,
    m.ReplyStarted: SessionRecorder._reply_started,
    m.CallDone: SessionRecorder._call_done,
    m.ReplyDone: SessionRecorder._reply_done,
    m.ItemTruncated: SessionRecorder._truncated,
    m.ItemDeleted: SessionRecorder._deleted,
    m.TurnMetrics: SessionRecorder._metrics,
    m.SessionError: SessionRecorder._error,
    m.TranscriptionFailed: SessionRecorder._asr_failed,
    m.SessionClosed: SessionRecorder._closed_event,
    m.ReplyAudio: SessionRecorder._agent_audio,
}
