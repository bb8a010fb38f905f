"""The SQL both backends share: two tables, one transaction per record.

::

    sessions (id PK, transport, started_at, ended_at, close_reason)
    records  (session_id, seq, at, kind, payload JSON text; PK (session_id, seq))

A backend holds one writing connection, used only by the store's writer thread and opened
lazily (so a database that is down does not stop the server from starting); after a failure it
is dropped and reopened no sooner than ``retry_s`` later. Reads open their own short-lived
connection, from any thread. Errors of the database library become :class:`StoreError`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from abc import ABC, abstractmethod
from typing import Any

from pipeline.errors import VoiceError

from .records import Kind, Record, SessionRow

log = logging.getLogger("voice.store")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, transport TEXT NOT NULL,"
    " started_at DOUBLE PRECISION NOT NULL, ended_at DOUBLE PRECISION, close_reason TEXT)",
    "CREATE INDEX IF NOT EXISTS sessions_by_start ON sessions (started_at, id)",
    "CREATE TABLE IF NOT EXISTS records (session_id TEXT NOT NULL, seq INTEGER NOT NULL,"
    " at DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,"
    " PRIMARY KEY (session_id, seq))",
)
_COLUMNS = "id, transport, started_at, ended_at, close_reason"


class StoreError(VoiceError):
    """The session store cannot read or write (disk full or read-only, database down)."""


class UnknownCursor(StoreError):
    """A page was asked for ``before`` a session the store does not have."""


class SqlBackend(ABC):
    """One database: what the writer thread calls, and the reads of the API."""

    param = "?"
    """The driver's placeholder (written ``?`` in the queries below)."""
    errors: tuple[type[Exception], ...] = ()
    """The driver's exceptions, translated into :class:`StoreError`."""

    def __init__(self, *, retry_s: float = 5.0) -> None:
        self.retry_s = retry_s
        self._conn: Any = None
        self._retry_at = 0.0

    @abstractmethod
    def _connect(self, *, readonly: bool) -> Any:
        """A new DB-API connection (transactions explicit: not in autocommit mode)."""

    def describe(self) -> str:
        return type(self).__name__

    # ------------------------------------------------------------ writes (the writer thread)

    def open_session(self, row: SessionRow) -> None:
        self._write(
            [
                (
                    f"INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, ?, NULL, NULL)"
                    " ON CONFLICT (id) DO NOTHING",
                    (row.id, row.transport, row.started_at),
                )
            ]
        )

    def append(self, session_id: str, record: Record) -> None:
        """One record, in one transaction; a ``closed`` record also ends the session's row."""
        payload = json.dumps(record.payload, separators=(",", ":"), default=str)
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                "INSERT INTO records (session_id, seq, at, kind, payload) VALUES (?, ?, ?, ?, ?)",
                (session_id, record.seq, record.at, str(record.kind), payload),
            )
        ]
        if record.kind is Kind.CLOSED:
            statements.append(
                (
                    "UPDATE sessions SET ended_at = ?, close_reason = ? WHERE id = ?",
                    (record.at, record.payload.get("reason"), session_id),
                )
            )
        self._write(statements)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*self.errors):
                conn.close()

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        conn = self._writer()
        try:
            cursor = conn.cursor()
            for sql, args in statements:
                cursor.execute(self._sql(sql), args)
            conn.commit()
        except self.errors as exc:
            self.close()
            self._retry_at = time.monotonic() + self.retry_s
            raise StoreError(f"cannot write to {self.describe()}: {exc}") from exc

    def _writer(self) -> Any:
        if self._conn is not None:
            return self._conn
        if time.monotonic() < self._retry_at:
            raise StoreError(f"{self.describe()} is unavailable (retrying every {self.retry_s} s)")
        try:
            conn = self._connect(readonly=False)
            cursor = conn.cursor()
            for sql in SCHEMA:
                cursor.execute(sql)
            conn.commit()
        except self.errors as exc:
            self._retry_at = time.monotonic() + self.retry_s
            raise StoreError(f"cannot open {self.describe()}: {exc}") from exc
        self._conn = conn
        return conn

    # ------------------------------------------------------------ reads (any thread)

    def list_sessions(self, limit: int, before: str | None = None) -> list[SessionRow]:
        """Newest first; ``before``: only those older than that session (the next page)."""
        order = f"ORDER BY started_at DESC, id DESC LIMIT {int(limit)}"
        with self._reading() as cursor:
            if before is None:
                cursor.execute(self._sql(f"SELECT {_COLUMNS} FROM sessions {order}"))
            else:
                cursor.execute(self._sql("SELECT started_at FROM sessions WHERE id = ?"), (before,))
                found = cursor.fetchone()
                if found is None:
                    raise UnknownCursor(f"no session {before!r}")
                cursor.execute(
                    self._sql(
                        f"SELECT {_COLUMNS} FROM sessions WHERE started_at < ?"
                        f" OR (started_at = ? AND id < ?) {order}"
                    ),
                    (found[0], found[0], before),
                )
            return [SessionRow(*row) for row in cursor.fetchall()]

    def load(self, session_id: str) -> tuple[SessionRow, list[Record]] | None:
        with self._reading() as cursor:
            cursor.execute(
                self._sql(f"SELECT {_COLUMNS} FROM sessions WHERE id = ?"), (session_id,)
            )
            row = cursor.fetchone()
            if row is None:
                return None
            cursor.execute(
                self._sql(
                    "SELECT seq, at, kind, payload FROM records WHERE session_id = ? ORDER BY seq"
                ),
                (session_id,),
            )
            records = [
                Record(seq, at, Kind(kind), json.loads(payload))
                for seq, at, kind, payload in cursor.fetchall()
            ]
        return SessionRow(*row), records

    def _reading(self) -> _Reading:
        return _Reading(self)

    def _sql(self, sql: str) -> str:
        return sql if self.param == "?" else sql.replace("?", self.param)


class _Reading:
    """``with backend._reading() as cursor``: a read-only connection, closed after; driver
    errors become :class:`StoreError`."""

    def __init__(self, backend: SqlBackend) -> None:
        self.backend = backend
        self.conn: Any = None

    def __enter__(self) -> Any:
        try:
            self.conn = self.backend._connect(readonly=True)
            return self.conn.cursor()
        except self.backend.errors as exc:
            raise StoreError(f"cannot read {self.backend.describe()}: {exc}") from exc

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if self.conn is not None:
            with contextlib.suppress(*self.backend.errors):
                self.conn.close()
        if isinstance(exc, self.backend.errors):
            raise StoreError(f"cannot read {self.backend.describe()}: {exc}") from exc
