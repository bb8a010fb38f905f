"""The input half of a Realtime session object: ``audio.input.turn_detection`` and
``audio.input.transcription`` (beta: ``turn_detection``, ``input_audio_transcription``).

Each is parsed into what the pipeline does, refused by name where the server cannot do what it
asks, and described back in the GA shape (``session.created`` / ``session.updated``).

- ``server_vad``: the VAD and silence (``threshold``, ``prefix_padding_ms``,
  ``silence_duration_ms``) and ``idle_timeout_ms`` (``pipeline/listening.py``).
- ``semantic_vad``: the words and the end-of-turn judge decide when a turn is over; ``eagerness``
  scales the silences (``pipeline/endpointing.py``, ``EAGERNESS``).
- ``transcription``: the recognizer is the server's; a client may name it by the server's
  name or by one of OpenAI's (mapped to it), and set a ``language`` it transcribes. ``null``
  turns the ``conversation.item.input_audio_transcription.*`` events off; the server still
  transcribes, since it answers from the words.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pipeline.errors import ProtocolError
from pipeline.settings import SessionSettings
from pipeline.turns import EAGERNESS_NAMES, TurnSettings

from .validate import field as get
from .validate import number, short_repr

PREFIX_PADDING_MS = (0, 2000)
SILENCE_DURATION_MS = (0, 10_000)
IDLE_TIMEOUT_MS = (5000, 30_000)
"""The range of ``idle_timeout_ms`` in OpenAI's API reference (the SDK's docstrings give none)."""

_COMMON_KEYS = {"type", "create_response", "interrupt_response"}
_VAD_KEYS = {
    "server_vad": _COMMON_KEYS
    | {"threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"},
    "semantic_vad": _COMMON_KEYS | {"eagerness"},
}

OPENAI_TRANSCRIPTION_MODELS = (
    "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15", "gpt-transcribe", "gpt-live-transcribe",
    "gpt-realtime-whisper",
)  # fmt: skip
"""OpenAI's transcription models a client may name; each is served by the server's recognizer.
(``gpt-4o-transcribe-diarize`` is not: there are no speaker labels here.)"""
_TRANSCRIPTION_KEYS = {"model", "language", "prompt", "delay", "keywords", "languages"}


# ---------------------------------------------------------------- turn detection


def apply_turn_detection(value: Any, param: str, s: SessionSettings) -> None:
    """Apply a ``turn_detection`` object (or ``null``: manual turns) to ``s``. Raises
    :class:`ProtocolError` naming the bad field; ``s`` may then be half changed (the caller
    works on a copy)."""
    if value is None:
        s.turn_detection = None
        return
    if not isinstance(value, dict):
        raise ProtocolError(f"{param} must be an object or null", code="invalid_type", param=param)
    kind = get(value, "type", str, path=param, default="server_vad")
    if kind not in _VAD_KEYS:
        raise ProtocolError(
            f"turn detection {short_repr(kind)} is not supported: use 'server_vad',"
            " 'semantic_vad' or null",
            code="invalid_value",
            param=f"{param}.type",
        )
    _refuse_keys(value, kind, param)
    previous = s.turn_detection
    same_kind = previous is not None and (previous.eagerness is None) == (kind == "server_vad")
    td = replace(previous) if previous is not None and same_kind else TurnSettings()
    if kind == "semantic_vad":
        td.eagerness = _eagerness(value, param, td.eagerness or "auto")
    else:
        _apply_server_vad(value, param, td)
    s.turn_detection = td
    s.create_response = get(value, "create_response", bool, path=param, default=s.create_response)
    s.interrupt_response = get(
        value, "interrupt_response", bool, path=param, default=s.interrupt_response
    )


def _refuse_keys(value: dict[str, Any], kind: str, param: str) -> None:
    unknown = sorted(set(value) - _VAD_KEYS[kind])
    if not unknown:
        return
    name = unknown[0]
    other = next((k for k, keys in _VAD_KEYS.items() if k != kind and name in keys), None)
    raise ProtocolError(
        f"'{param}.{name}' is a parameter of {other}, not of {kind}"
        if other
        else f"unknown parameter '{param}.{name}'",
        code="unknown_parameter",
        param=f"{param}.{name}",
    )


def _eagerness(value: dict[str, Any], param: str, current: str) -> str:
    eagerness = get(value, "eagerness", str, path=param, default=current)
    if eagerness not in EAGERNESS_NAMES:
        raise ProtocolError(
            f"{param}.eagerness must be one of {', '.join(EAGERNESS_NAMES)},"
            f" got {short_repr(eagerness)}",
            code="invalid_value",
            param=f"{param}.eagerness",
        )
    return eagerness


def _apply_server_vad(value: dict[str, Any], param: str, td: TurnSettings) -> None:
    td.threshold = number(value, "threshold", float, 0.0, 1.0, path=param, default=td.threshold)
    td.prefix_padding_ms = number(
        value, "prefix_padding_ms", int, *PREFIX_PADDING_MS, path=param,
        default=td.prefix_padding_ms,
    )  # fmt: skip
    td.silence_duration_ms = number(
        value, "silence_duration_ms", int, *SILENCE_DURATION_MS, path=param,
        default=td.silence_duration_ms,
    )  # fmt: skip
    if value.get("idle_timeout_ms", td.idle_timeout_ms) is None:
        td.idle_timeout_ms = None
    else:
        td.idle_timeout_ms = number(
            value, "idle_timeout_ms", int, *IDLE_TIMEOUT_MS, path=param,
            default=td.idle_timeout_ms,
        )  # fmt: skip
    try:
        td.validate()
    except ValueError as exc:
        raise ProtocolError(
            f"{param}: {exc}", code="invalid_value", param=f"{param}.threshold"
        ) from None


def describe_turn_detection(s: SessionSettings) -> dict[str, Any] | None:
    td = s.turn_detection
    if td is None:
        return None
    flags = {"create_response": s.create_response, "interrupt_response": s.interrupt_response}
    if td.eagerness is not None:
        return {"type": "semantic_vad", "eagerness": td.eagerness, **flags}
    return {
        "type": "server_vad",
        "threshold": td.threshold,
        "prefix_padding_ms": td.prefix_padding_ms,
        "silence_duration_ms": td.silence_duration_ms,
        "idle_timeout_ms": td.idle_timeout_ms,
        **flags,
    }


# ---------------------------------------------------------------- transcription


@dataclass(slots=True, frozen=True)
class Transcription:
    """What the client asked of input transcription (the recognizer is always the server's)."""

    model: str
    """The model name the client chose, as reported (the server's own by default)."""
    language: str | None = None


@dataclass(slots=True, frozen=True)
class Recognizer:
    """The server's recognizer, as a client may see it."""

    model: str
    """Its name in ``session.created`` (``whisper-tiny.en``)."""
    languages: tuple[str, ...] = ("en",)
    """The languages it transcribes as configured; empty: it detects the language itself
    (then no language can be set per session)."""


def recognizer_languages(model: str, language: str) -> tuple[str, ...]:
    """The ``Recognizer.languages`` of a Whisper ``model`` (``asr.model``) run with
    ``language`` (``asr.language``; empty: detected)."""
    if model.endswith(".en"):
        return ("en",)
    return (language,) if language else ()


def apply_transcription(
    value: Any, param: str, current: Transcription | None, recognizer: Recognizer
) -> Transcription | None:
    """A ``transcription`` object (or ``null``: no transcription events) → what it asks, or
    :class:`ProtocolError` naming the field the server cannot honour."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"{param} must be an object or null", code="invalid_type", param=param)
    unknown = sorted(set(value) - _TRANSCRIPTION_KEYS)
    if unknown:
        raise ProtocolError(
            f"unknown parameter '{param}.{unknown[0]}'",
            code="unknown_parameter",
            param=f"{param}.{unknown[0]}",
        )
    _refuse_unsupported(value, param)
    base = current or Transcription(recognizer.model)
    model: str | None = get(value, "model", (str, type(None)), path=param, default=base.model)
    model = model or recognizer.model
    if model != recognizer.model and model not in OPENAI_TRANSCRIPTION_MODELS:
        raise ProtocolError(
            f"{param}.model {short_repr(model)} is not available: use {recognizer.model!r}"
            f" (this server's recognizer) or one of {', '.join(OPENAI_TRANSCRIPTION_MODELS)},"
            " which it serves",
            code="invalid_value",
            param=f"{param}.model",
        )
    language: str | None = get(
        value, "language", (str, type(None)), path=param, default=base.language
    )
    if language and language not in recognizer.languages:
        can = (
            f"transcribes only {', '.join(map(repr, recognizer.languages))}"
            if recognizer.languages
            else "detects the language itself; it cannot be set per session"
        )
        raise ProtocolError(
            f"{param}.language {short_repr(language)} is not available: {recognizer.model} {can}",
            code="invalid_value",
            param=f"{param}.language",
        )
    return Transcription(model, language or None)


def _refuse_unsupported(value: dict[str, Any], param: str) -> None:
    why = {
        "prompt": "the recognizer takes no prompt per session",
        "delay": "the recognizer has no latency setting",
        "keywords": "the recognizer takes no keywords",
        "languages": "set one 'language'",
    }
    for name, reason in why.items():
        if value.get(name):  # null, "" and [] ask for nothing
            raise ProtocolError(
                f"{param}.{name} is not supported here ({reason}); leave it unset",
                code="unsupported_parameter",
                param=f"{param}.{name}",
            )


def describe_transcription(t: Transcription | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {"model": t.model} if t.language is None else {"model": t.model, "language": t.language}
