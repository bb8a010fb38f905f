"""Log formats: ``text`` (one line per record) or ``json`` (one object per line).

A session's records carry its id: the session's ``LoggerAdapter`` passes ``extra={"session":
id}``, and :class:`SessionFilter` gives every other record ``session = "-"`` so that the text
format's ``[%(session)s]`` always has a value. The JSON format leaves the key out for those.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from pipeline.errors import ConfigError

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(session)s] %(message)s"
NO_SESSION = "-"


class SessionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "session"):
            record.session = NO_SESSION
        return True


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "session"?, "message", "exception"?}``, one line each."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        session = getattr(record, "session", NO_SESSION)
        if session != NO_SESSION:
            out["session"] = session
        out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(kind: str) -> logging.Formatter:
    """The formatter of ``server.log_format``; raises :class:`ConfigError` for another name."""
    if kind == "json":
        return JsonFormatter()
    if kind == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ConfigError(f"server.log_format must be one of {', '.join(FORMATS)}, not {kind!r}")
