"""Example server-side tools, and a template for your own: ``voice serve --tools
pipeline.tools.examples`` lets the model tell the time, hang up,
transfer a SIP call and press keys on a SIP call's keypad (an automated menu's options)."""

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


@tool(on_barge_in="finish", timeout_s=40.0)
async def transfer_call(
    context: ToolContext,
    target: Annotated[str, "Where to transfer the caller: a sip: or tel: URI"],
) -> str:
    """Transfer the phone call to another number or SIP address (blind transfer), once you have
    told the caller; the call with you then ends."""
    await context.transfer(target)
    return f"The call has been transferred to {target}."


@tool(on_barge_in="finish", timeout_s=1.0, needs="send_digits")
async def press_keys(
    context: ToolContext,
    keys: Annotated[str, "The keys to press, in order: digits 0-9, * and # (e.g. 2 or 1234#)"],
) -> str:
    """Press keys on the phone's keypad (DTMF tones), e.g. to choose an option in an automated
    phone menu or to enter a number it asks for."""
    context.send_digits(keys.replace(" ", ""))
    return f"Pressed {' '.join(keys.replace(' ', ''))} on the keypad."


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
