"""Example server-side tools, and a template for your own: ``voice serve --tools
pipeline.tools.examples`` lets the model tell the time and hang up."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from ..errors import ToolError
from .registry import ToolContext, tool


@tool(timeout_s=1.0)
async def get_current_time(
    timezone: Annotated[str, "An IANA time zone such as Europe/Paris"] = "UTC",
) -> dict[str, Any]:
    """Tell the current date and time in a time zone."""
    now = datetime.now(_zone(timezone))
    return {
        "timezone": timezone,
        "date": now.strftime("%Y-%m-%d"),
        "weekday": now.strftime("%A"),
        "time": now.strftime("%H:%M"),
        "utc_offset": now.strftime("%z")[:3] + ":" + now.strftime("%z")[3:],
    }


@tool(on_barge_in="finish", timeout_s=1.0)
async def end_call(
    context: ToolContext, reason: Annotated[str, "Why the call ends, for the log"] = ""
) -> str:
    """End the phone call, once you have said goodbye."""
    context.end_call(reason)
    return "The call will end after this reply."


def _zone(name: str) -> tzinfo:
    if name.upper() in ("UTC", "Z"):
        return UTC  # needs no time zone database
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError; a bad path a ValueError
        raise ToolError(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Paris",
            tool="get_current_time",
        ) from None
