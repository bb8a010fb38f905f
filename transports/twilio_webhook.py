"""Twilio's voice webhook (``POST /v1/twilio/voice``), sans-I/O: the call's form in, TwiML out.

Point a Twilio number's "A call comes in" webhook at ``https://<public host>/v1/twilio/voice``.
Twilio POSTs the call's facts as a form (``CallSid``, ``From``, ``To`` …); the answer connects
the call to the media stream::

    <Response><Connect><Stream url="wss://<public host>/v1/twilio/media-stream">
        <Parameter name="CallSid" value="CA…"/> <Parameter name="From" value="+1…"/> …
        <Parameter name="instructions" value="…"/>
    </Stream></Connect></Response>

Custom parameters travel with the stream's ``start`` message: the call's facts (:data:`CALL_FACTS`)
become the call's headers (what the call-control webhook is told), and the session settings in
:data:`SESSION_PARAMETERS`, taken from the webhook URL's query (``/v1/twilio/voice?instructions=
…``, so that each Twilio number can have its own agent), configure the session when the stream
starts (validated as ``session.update``; a refused one is logged and the defaults stay).
Anything else in the query is refused (400) by name, as are oversized values. While the server
takes no new session (at capacity, draining, warming up) the answer is :func:`reject_twiml`
instead: the caller hears busy, and no stream comes only to be refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.sax.saxutils import quoteattr

from pipeline.errors import ProtocolError

STREAM_PATH = "/v1/twilio/media-stream"
CALL_FACTS = ("CallSid", "AccountSid", "From", "To", "Direction", "CallerName", "ForwardedFrom")
"""Form fields of Twilio's webhook passed on to the stream (and so to the call's headers)."""
SESSION_PARAMETERS = ("instructions", "voice")
"""Query parameters of the webhook URL passed to the session."""
MAX_VALUE_CHARS = 2000
"""A parameter value longer than this is refused (instructions) or cut (the call's facts)."""
MAX_FACT_CHARS = 256


def stream_url(public_url: str, host: str, secure: bool) -> str:
    """The ``wss://`` URL of the media stream, from ``twilio.public_url`` (``wss://host`` or
    ``https://host``; either scheme works) or, without it, from the request's host."""
    if public_url:
        base = public_url.rstrip("/")
        for web_scheme, ws_scheme in (("https://", "wss://"), ("http://", "ws://")):
            if base.startswith(web_scheme):
                base = ws_scheme + base.removeprefix(web_scheme)
        return base + STREAM_PATH
    return f"{'wss' if secure else 'ws'}://{host}{STREAM_PATH}"


def stream_parameters(form: Mapping[str, str], query: Mapping[str, str]) -> dict[str, str]:
    """The stream's custom parameters: the call's facts from the form, the session settings
    from the query. Raises :class:`ProtocolError` naming a query parameter that is unknown or
    too long."""
    params = {k: form[k][:MAX_FACT_CHARS] for k in CALL_FACTS if form.get(k)}
    for key, value in query.items():
        if key not in SESSION_PARAMETERS:
            raise ProtocolError(
                f"unknown query parameter {key[:40]!r}: the webhook takes"
                f" {', '.join(SESSION_PARAMETERS)}",
                code="unknown_parameter",
                param=key[:40],
            )
        if len(value) > MAX_VALUE_CHARS:
            raise ProtocolError(
                f"{key} is {len(value)} characters long, more than {MAX_VALUE_CHARS}",
                code="value_too_long",
                param=key,
            )
        params[key] = value
    return params


def connect_twiml(url: str, parameters: Mapping[str, str]) -> str:
    """``<Connect><Stream>`` with the parameters, XML-escaped."""
    lines = [
        f"<Parameter name={quoteattr(k)} value={quoteattr(_xml_text(v))}/>"
        for k, v in parameters.items()
    ]
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect><Stream url={quoteattr(url)}>{''.join(lines)}</Stream></Connect>"
        "</Response>"
    )


def reject_twiml() -> str:
    """``<Reject reason="busy"/>``: the caller hears a busy tone, no stream is opened (the
    answer while the server takes no new session)."""
    return '<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>'


def session_settings(custom: Mapping[str, str]) -> dict[str, str]:
    """Of a stream's custom parameters, those that configure the session, as a Realtime
    ``session`` object."""
    return {k: custom[k] for k in SESSION_PARAMETERS if k in custom}


def call_headers(custom: Mapping[str, str], call_sid: str | None) -> list[tuple[str, str]]:
    """A Twilio call's facts as the call's headers (``X-Twilio-CallSid`` …)."""
    facts = {k: v for k, v in custom.items() if k in CALL_FACTS}
    if call_sid and "CallSid" not in facts:
        facts["CallSid"] = call_sid
    return [(f"X-Twilio-{k}", v[:MAX_FACT_CHARS]) for k, v in facts.items()]


def _xml_text(value: str) -> str:
    """XML 1.0 cannot carry control characters (but tab, newline, return): they are dropped."""
    return "".join(c for c in value if c >= " " or c in "\t\n\r")
