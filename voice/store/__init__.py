"""Session records: every session's transcript, responses, metrics and errors, written as they
happen (and, optionally, both sides' audio), so that a crash loses at most the turn in progress.

The store lives under ``voice/`` rather than ``pipeline/`` because it is the server's concern,
like its configuration: the session core only tells observers what happened
(``Session.observers``, ``Session.input_taps``) and knows nothing of databases.

::

    recorder.py   a session's events → records        (the event loop)
    writer.py     SessionStore: bounded queue → thread (never blocks the loop; drops when full)
    sql.py        the tables, shared by sqlite.py (default) and postgres.py (``postgres`` extra)
    records.py    the record kinds, and records → one session again (pure)
    audio.py      WAV files of both sides
    api.py        GET /v1/sessions, GET /v1/sessions/{id}

Errors: :class:`~voice.store.sql.StoreError` (a :class:`~pipeline.errors.VoiceError`), with
:class:`~voice.store.sql.UnknownCursor` under it.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigError

from .audio import AudioFiles
from .postgres import PostgresBackend
from .recorder import SessionRecorder
from .records import Kind, Record
from .sql import SqlBackend, StoreError, UnknownCursor
from .sqlite import SqliteBackend
from .writer import SessionStore, StoreStats

__all__ = [
    "Kind",
    "Record",
    "SessionRecorder",
    "SessionStore",
    "SqlBackend",
    "StoreError",
    "StoreStats",
    "UnknownCursor",
    "backend_for",
    "open_store",
]


def backend_for(url: str, data_dir: str | Path, *, timeout: float = 10.0) -> SqlBackend:
    """``""`` → ``<data_dir>/sessions.db``; ``sqlite:///relative/path.db`` or
    ``sqlite:////absolute/path.db``; ``postgresql://user@host/db``."""
    if not url:
        return SqliteBackend(Path(data_dir) / "sessions.db", timeout=timeout)
    if url.startswith("sqlite:///"):
        return SqliteBackend(url.removeprefix("sqlite:///"), timeout=timeout)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(url, timeout=timeout)
    raise ConfigError(
        f"store.url {url!r}: use sqlite:///path/to/file.db or postgresql://user@host/db"
    )


def open_store(
    url: str,
    data_dir: str | Path,
    *,
    max_queued: int,
    record_audio: bool = False,
    timeout: float = 10.0,
) -> SessionStore:
    """A store (not yet started) for ``store.url``; recordings go to ``<data_dir>/audio``."""
    audio = AudioFiles(Path(data_dir) / "audio") if record_audio else None
    backend = backend_for(url, data_dir, timeout=timeout)
    return SessionStore(backend, max_queued=max_queued, audio=audio)
