"""SQLite (the stdlib ``sqlite3``): one file, in WAL mode, each record committed on its own.

With ``synchronous=NORMAL`` a committed record survives the process being killed; only a power
loss may take the last few (``FULL`` would sync the disk on every record).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from .sql import SCHEMA, SqlBackend


class SqliteBackend(SqlBackend):
    errors = (sqlite3.Error,)

    def __init__(self, path: str | Path, *, timeout: float = 10.0, retry_s: float = 5.0) -> None:
        super().__init__(retry_s=retry_s)
        self.path = Path(path)
        self.timeout = timeout

    def describe(self) -> str:
        return f"SQLite {self.path}"

    def _connect(self, *, readonly: bool) -> Any:
        if readonly:
            if not self.path.exists():  # nothing written yet: an empty store
                conn = sqlite3.connect(":memory:")
                for sql in SCHEMA:
                    conn.execute(sql)
                return conn
            return sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=self.timeout
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise sqlite3.OperationalError(f"cannot create {self.path.parent}: {exc}") from exc
        conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn
