"""Example server-side tools, and a template for your own: ``voice serve --tools
pipeline.tools.examples`` lets the model tell the time, hang up,
transfer a SIP call and press keys on a SIP call's keypad (an automated menu's options)."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from functools import cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo, available_timezones

from ..errors import ToolError
from .registry import ToolContext, tool


@tool(timeout_s=1.0)
async def get_current_time(
    timezone: Annotated[str, "An IANA time zone such as Europe/Paris"] = "UTC",
) -> dict[str, Any]:
    """Tell the current date and time in a time zone."""
    name, zone = _zone(timezone)
    now = datetime.now(zone)
    return {
        "timezone": name,
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


_ABBREVIATIONS = {
    **dict.fromkeys(("EST", "EDT", "ET"), "America/New_York"),
    **dict.fromkeys(("CST", "CDT", "CT"), "America/Chicago"),
    **dict.fromkeys(("MST", "MDT", "MT"), "America/Denver"),
    **dict.fromkeys(("PST", "PDT", "PT"), "America/Los_Angeles"),
    **dict.fromkeys(("CET", "CEST"), "Europe/Paris"),
    "BST": "Europe/London",
    "IST": "Asia/Kolkata",
    "JST": "Asia/Tokyo",
    "AEST": "Australia/Sydney",
}
"""What people (and small models) say instead of an IANA name: the region's zone, with its
daylight saving time (tzdata's own ``EST`` or ``MST`` is a fixed offset)."""


def _zone(name: str) -> tuple[str, tzinfo]:
    """The IANA name and zone ``name`` means: an IANA name in any case or with spaces
    (``america/new york``), a common abbreviation (``PST``) or a zone's city (``Paris``)."""
    key = "_".join(name.split()).casefold()
    if key in ("utc", "z", "gmt", "utc+0", "gmt+0"):
        return "UTC", UTC  # needs no time zone database
    names = _names()
    found = names.get(key) or _ABBREVIATIONS.get(key.upper()) or _cities().get(key)
    if found is None:
        raise ToolError(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Paris",
            tool="get_current_time",
        )
    return found, ZoneInfo(found)


@cache
def _names() -> dict[str, str]:
    """Every zone of the time zone database, by its name in lower case."""
    zones = available_timezones() - {"localtime", "Factory"}
    return {zone.casefold(): zone for zone in zones}


@cache
def _cities() -> dict[str, str]:
    """The zones named after one city (``paris`` → ``Europe/Paris``), when only one is."""
    by_city: dict[str, list[str]] = {}
    for zone in _names().values():
        if "/" in zone:
            by_city.setdefault(zone.rsplit("/", 1)[1].casefold(), []).append(zone)
    return {city: zones[0] for city, zones in by_city.items() if len(zones) == 1}
