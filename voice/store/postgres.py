"""PostgreSQL (``psycopg`` 3, the ``postgres`` extra), for a fleet of servers sharing one
database. Each record is committed on its own; ``psycopg`` is imported only when used."""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError

from .sql import SqlBackend


class PostgresBackend(SqlBackend):
    param = "%s"

    def __init__(self, url: str, *, timeout: float = 10.0, retry_s: float = 5.0) -> None:
        super().__init__(retry_s=retry_s)
        try:
            import psycopg
        except ImportError:
            raise ConfigError(
                "store.url is a PostgreSQL URL but psycopg is not installed:"
                " pip install -e '.[postgres]'"
            ) from None
        self._psycopg = psycopg
        self.errors = (psycopg.Error,)
        self.url = url
        self.timeout = timeout

    def describe(self) -> str:
        return f"PostgreSQL {self._psycopg.conninfo.conninfo_to_dict(self.url).get('dbname', '')}"

    def _connect(self, *, readonly: bool) -> Any:
        timeout_ms = int(self.timeout * 1000)
        return self._psycopg.connect(
            self.url,
            connect_timeout=max(1, round(self.timeout)),
            options=f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
        )
