"""The session store: records go to the database through one bounded queue and one thread.

The event loop only ever puts a record on the queue (:meth:`SessionStore.record` never blocks);
the writer thread takes them in order and commits each on its own. When the queue is full (the
disk is slow or failing, the database is down) a record is dropped, counted in
``stats.dropped`` and logged, and the session goes on: a session is never held up by its
record. A record the database refuses is counted in ``stats.failed`` and logged the same way.
Reads (:meth:`list_sessions`, :meth:`get_session`) block: call them in a thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .audio import AudioFiles
from .records import Kind, Record, SessionRow, assemble
from .sql import SqlBackend, StoreError

log = logging.getLogger("voice.store")


@dataclass(slots=True)
class StoreStats:
    written: int = 0
    dropped: int = 0
    """Records (and audio chunks) not queued because the queue was full."""
    failed: int = 0
    """Records (and audio chunks) the database or the disk refused."""


@dataclass(slots=True, frozen=True)
class _Open:
    row: SessionRow


@dataclass(slots=True, frozen=True)
class _Append:
    session_id: str
    record: Record


@dataclass(slots=True, frozen=True)
class _Audio:
    session_id: str
    side: str
    samples: np.ndarray
    rate: int


@dataclass(slots=True, frozen=True)
class _Flush:
    done: threading.Event


_STOP = object()
_Op = _Open | _Append | _Audio | _Flush


class SessionStore:
    """Where every session's records go. ``audio``: where recordings go (None: no recording).

    Thread-safety: :meth:`open_session`, :meth:`record` and :meth:`record_audio` are called on
    the event loop and never block; everything else blocks and may run in any thread.
    """

    def __init__(
        self, backend: SqlBackend, *, max_queued: int = 10_000, audio: AudioFiles | None = None
    ) -> None:
        self.backend = backend
        self.audio = audio
        self.stats = StoreStats()
        self._queue: queue.Queue[Any] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="session-store", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then stop the writer."""
        thread, self._thread = self._thread, None
        if thread is not None:
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                log.error("session store: queue still full after %s s; stopping", timeout)
            thread.join(timeout)
        self.backend.close()

    # ------------------------------------------------------------ writes (the event loop)

    def open_session(self, session_id: str, transport: str, started_at: float) -> None:
        self._put(_Open(SessionRow(session_id, transport, started_at)))

    def record(self, session_id: str, record: Record) -> None:
        self._put(_Append(session_id, record))

    def record_audio(self, session_id: str, side: str, samples: np.ndarray, rate: int) -> None:
        if self.audio is not None:
            self._put(_Audio(session_id, side, samples.copy(), rate))

    def _put(self, op: _Op) -> None:
        try:
            self._queue.put_nowait(op)
        except queue.Full:
            self.stats.dropped += 1
            if _worth_logging(self.stats.dropped):
                log.warning(
                    "session store: %d records queued, the most it holds: record dropped"
                    " (%d so far)",
                    self._queue.maxsize,
                    self.stats.dropped,
                )

    # ------------------------------------------------------------ reads (any thread)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until what was queued before is written; False if not within ``timeout``."""
        done = threading.Event()
        try:
            self._queue.put(_Flush(done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def list_sessions(self, limit: int = 20, before: str | None = None) -> list[dict[str, Any]]:
        return [row.summary() for row in self.backend.list_sessions(limit, before)]

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        loaded = self.backend.load(session_id)
        return None if loaded is None else assemble(*loaded)

    # ------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        while (op := self._queue.get()) is not _STOP:
            if isinstance(op, _Flush):
                op.done.set()
                continue
            try:
                self._apply(op)
            except (StoreError, OSError) as exc:
                self._failed(exc)
            except Exception as exc:  # a bug must not stop the writer: the next record may pass
                log.exception("session store: cannot write %s", type(op).__name__)
                self._failed(exc, logged=True)
            else:
                self.stats.written += 1
        if self.audio is not None:
            self.audio.close()

    def _apply(self, op: _Op) -> None:
        if isinstance(op, _Open):
            self.backend.open_session(op.row)
        elif isinstance(op, _Append):
            self.backend.append(op.session_id, op.record)
            if op.record.kind is Kind.CLOSED and self.audio is not None:
                self.audio.close_session(op.session_id)
        elif isinstance(op, _Audio) and self.audio is not None:
            self.audio.write(op.session_id, op.side, op.samples, op.rate)

    def _failed(self, exc: Exception, *, logged: bool = False) -> None:
        self.stats.failed += 1
        if not logged and _worth_logging(self.stats.failed):
            log.error("session store: %s (%d records lost so far)", exc, self.stats.failed)


def _worth_logging(count: int) -> bool:
    """The first time, then every 100th: a failing disk must not flood the log."""
    return count == 1 or count % 100 == 0


def now() -> float:
    """Wall-clock time of a record (Unix seconds)."""
    return time.time()
