"""The Realtime session object: what ``session.created``/``session.updated`` show and what
``session.update`` may change. GA shape (``audio.input.format`` …); the beta's flat fields
(``input_audio_format``, ``turn_detection``, ``voice``, ``modalities``) are accepted too."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.engines import GenerationOptions
from pipeline.errors import ProtocolError
from pipeline.session import SessionSettings
from pipeline.turns import TurnSettings

from .formats import PCM, AudioFormat, parse_format
from .validate import field as get
from .validate import number, short_repr

TEMPERATURE = (0.6, 1.2)
"""OpenAI's documented range for ``temperature``."""
PREFIX_PADDING_MS = (0, 2000)
SILENCE_DURATION_MS = (0, 10_000)

OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
)  # fmt: skip
"""OpenAI's voice names: a client may choose any of them, mapped to one of the server's voices
(``RealtimeConfig.voices``, from ``tts.voice_map``)."""

_SESSION_KEYS = {
    "type", "model", "instructions", "audio", "output_modalities", "max_output_tokens",
    "tools", "tool_choice", "tracing", "truncation", "include", "prompt", "temperature",
    # beta aliases
    "modalities", "voice", "input_audio_format", "output_audio_format", "turn_detection",
    "input_audio_transcription", "max_response_output_tokens", "input_audio_noise_reduction",
    "speed", "object", "id", "expires_at", "client_secret",
}  # fmt: skip
_VAD_KEYS = {
    "type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
    "interrupt_response", "idle_timeout_ms",
}  # fmt: skip


@dataclass(slots=True)
class RealtimeConfig:
    """One connection's view of its session."""

    model: str
    settings: SessionSettings
    input_format: AudioFormat = PCM
    output_format: AudioFormat = PCM
    speed: float = 1.0
    """Speaking rate the client asked for (0.25-1.5; 1.0 is the voice's own): each synthesis of
    the session's replies is to run at it (``SpeechSynthesizer.synthesize(text, speed=...)``)."""
    voices: dict[str, str] = field(default_factory=dict)
    """The voice names a client may choose → the server voice each one speaks with
    (``settings.voice``). Empty: every OpenAI name and the server's own voice map to
    ``settings.voice``."""
    voice: str = ""
    """The voice name the client chose, as reported; empty: the server's voice."""
    transcription_model: str = "whisper"
    max_tokens_cap: int = 1024
    fixed_output_rate: int | None = None
    """Set by transports with their own codec (WebRTC: Opus at 48 kHz)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        own = self.settings.voice
        if not self.voices:
            self.voices = {own: own, **dict.fromkeys(OPENAI_VOICES, own)}
        self.voice = self.voice or own

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "type": "realtime",
            "model": self.model,
            "instructions": s.instructions,
            "output_modalities": ["audio"],
            "max_output_tokens": s.generation.max_tokens,
            "tools": [],
            "tool_choice": "auto",
            "audio": {
                "input": {
                    "format": self.input_format.describe(),
                    "transcription": {"model": self.transcription_model},
                    "noise_reduction": None,
                    "turn_detection": _describe_vad(s),
                },
                "output": {
                    "format": self.output_format.describe(),
                    "voice": self.voice,
                    "speed": self.speed,
                },
            },
        }

    def apply_update(self, session: Any) -> None:
        """Apply a ``session.update`` payload. All or nothing: on error nothing changes."""
        if not isinstance(session, dict):
            raise ProtocolError("'session' must be an object", code="invalid_type", param="session")
        unknown = set(session) - _SESSION_KEYS
        if unknown:
            raise ProtocolError(
                f"unknown parameter 'session.{sorted(unknown)[0]}'",
                code="unknown_parameter",
                param=f"session.{sorted(unknown)[0]}",
            )
        new = replace(self, settings=replace(self.settings))
        new.settings.generation = replace(self.settings.generation)
        new._apply(session)
        for name in self.__slots__:
            setattr(self, name, getattr(new, name))

    def _apply(self, session: dict[str, Any]) -> None:
        s = self.settings
        kind = get(session, "type", str, path="session", default="realtime")
        if kind != "realtime":
            raise ProtocolError(
                f"session.type {kind!r} is not supported: use 'realtime'",
                code="unsupported_value",
                param="session.type",
            )
        s.instructions = get(session, "instructions", str, path="session", default=s.instructions)
        self._apply_modalities(session)
        for key in ("max_output_tokens", "max_response_output_tokens"):
            if key in session:
                s.generation = _max_tokens(session[key], s.generation, self.max_tokens_cap, key)
        tools = get(session, "tools", list, path="session", default=[])
        if tools:
            raise ProtocolError(
                "tools are not supported by this server yet",
                code="unsupported_parameter",
                param="session.tools",
            )
        audio = get(session, "audio", dict, path="session", default={})
        audio_in = get(audio, "input", dict, path="session.audio", default={})
        audio_out = get(audio, "output", dict, path="session.audio", default={})
        for value, param in (
            (audio_in.get("format"), "session.audio.input.format"),
            (session.get("input_audio_format"), "session.input_audio_format"),
        ):
            if value is not None:
                self.input_format = parse_format(value, param)
        for value, param in (
            (audio_out.get("format"), "session.audio.output.format"),
            (session.get("output_audio_format"), "session.output_audio_format"),
        ):
            if value is not None:
                self.output_format = parse_format(value, param)
        s.output_rate = self.fixed_output_rate or self.output_format.rate
        for container, param in ((audio_in, "session.audio.input"), (session, "session")):
            if "turn_detection" in container:
                self._apply_vad(container["turn_detection"], f"{param}.turn_detection")
        for container, param in ((audio_out, "session.audio.output"), (session, "session")):
            voice = container.get("voice")
            if voice is not None:
                self.voice = _voice(voice, f"{param}.voice", self.voices)
                s.voice = self.voices[self.voice]
        for container, path in ((audio_out, "session.audio.output"), (session, "session")):
            self.speed = number(container, "speed", float, 0.25, 1.5, path=path, default=self.speed)
        s.speed = self.speed
        temperature = number(
            session, "temperature", float, *TEMPERATURE, path="session", default=None
        )
        if temperature is not None:
            s.generation.temperature = temperature

    def _apply_modalities(self, session: dict[str, Any]) -> None:
        for key in ("output_modalities", "modalities"):
            value = get(session, key, list, path="session", default=None)
            if value is not None and "audio" not in value:
                raise ProtocolError(
                    "only audio output is supported (output_modalities ['audio'])",
                    code="invalid_value",
                    param=f"session.{key}",
                )

    def _apply_vad(self, value: Any, param: str) -> None:
        s = self.settings
        if value is None:
            s.turn_detection = None
            return
        if not isinstance(value, dict):
            raise ProtocolError(
                f"{param} must be an object or null", code="invalid_type", param=param
            )
        unknown = set(value) - _VAD_KEYS
        if unknown:
            raise ProtocolError(
                f"unknown parameter '{param}.{sorted(unknown)[0]}'",
                code="unknown_parameter",
                param=param,
            )
        kind = get(value, "type", str, path=param, default="server_vad")
        if kind != "server_vad":
            raise ProtocolError(
                f"turn detection {kind!r} is not supported: use 'server_vad' or null",
                code="invalid_value",
                param=f"{param}.type",
            )
        if value.get("idle_timeout_ms") is not None:
            raise ProtocolError(
                "idle_timeout_ms is not supported by this server yet",
                code="unsupported_parameter",
                param=f"{param}.idle_timeout_ms",
            )
        td = replace(s.turn_detection) if s.turn_detection else TurnSettings()
        td.threshold = number(value, "threshold", float, 0.0, 1.0, path=param, default=td.threshold)
        td.prefix_padding_ms = number(
            value, "prefix_padding_ms", int, *PREFIX_PADDING_MS, path=param,
            default=td.prefix_padding_ms,
        )  # fmt: skip
        td.silence_duration_ms = number(
            value, "silence_duration_ms", int, *SILENCE_DURATION_MS, path=param,
            default=td.silence_duration_ms,
        )  # fmt: skip
        try:
            td.validate()
        except ValueError as exc:
            raise ProtocolError(
                f"{param}: {exc}", code="invalid_value", param=f"{param}.threshold"
            ) from None
        s.turn_detection = td
        s.create_response = get(
            value, "create_response", bool, path=param, default=s.create_response
        )
        s.interrupt_response = get(
            value, "interrupt_response", bool, path=param, default=s.interrupt_response
        )


def _describe_vad(s: SessionSettings) -> dict[str, Any] | None:
    td = s.turn_detection
    if td is None:
        return None
    return {
        "type": "server_vad",
        "threshold": td.threshold,
        "prefix_padding_ms": td.prefix_padding_ms,
        "silence_duration_ms": td.silence_duration_ms,
        "create_response": s.create_response,
        "interrupt_response": s.interrupt_response,
    }


def _voice(value: Any, param: str, voices: dict[str, str]) -> str:
    """A voice name (or ``{"id": name}``) that ``voices`` knows."""
    name = value.get("id") if isinstance(value, dict) else value
    if isinstance(name, str) and name in voices:
        return name
    raise ProtocolError(
        f"{param}: unknown voice {short_repr(name)}; the voices are {', '.join(sorted(voices))}",
        code="invalid_value",
        param=param,
    )


def _max_tokens(value: Any, current: GenerationOptions, cap: int, key: str) -> GenerationOptions:
    if value == "inf":
        return replace(current, max_tokens=cap)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise ProtocolError(
            f"{key} must be an integer between 1 and 4096, or 'inf'",
            code="invalid_value",
            param=f"session.{key}",
        )
    return replace(current, max_tokens=min(value, cap))
