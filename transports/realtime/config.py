"""The Realtime session object: what ``session.created``/``session.updated`` show and what
``session.update`` may change. GA shape (``audio.input.format`` …); the beta's flat fields
(``input_audio_format``, ``turn_detection``, ``voice``, ``modalities``) are accepted too."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.engines import GenerationOptions
from pipeline.engines.tools import TOOL_CHOICES, ToolSpec
from pipeline.errors import ProtocolError
from pipeline.session import SessionSettings

from .formats import PCM, AudioFormat, parse_format
from .input_config import (
    Recognizer,
    Transcription,
    apply_transcription,
    apply_turn_detection,
    describe_transcription,
    describe_turn_detection,
)
from .tools import check_choice, parse_tool_choice, parse_tools
from .validate import field as get
from .validate import number, short_repr

TEMPERATURE = (0.6, 1.2)
"""OpenAI's documented range for ``temperature``."""

OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
)  # fmt: skip
"""OpenAI's voice names: a client may choose any of them, mapped to one of the server's voices
(``RealtimeConfig.voices``, from ``tts.voice_map``)."""

OPENAI_REALTIME_MODELS = ("gpt-realtime", "gpt-4o-realtime", "gpt-4o-mini-realtime")

_SESSION_KEYS = {
    "type", "model", "instructions", "audio", "output_modalities", "max_output_tokens",
    "tools", "tool_choice", "tracing", "truncation", "include", "prompt", "temperature",
    "parallel_tool_calls", "reasoning",
    # this server's: who replies (``pipeline.handoff``)
    "engine",
    # beta aliases
    "modalities", "voice", "input_audio_format", "output_audio_format", "turn_detection",
    "input_audio_transcription", "max_response_output_tokens", "input_audio_noise_reduction",
    "speed",
    # read-only fields of a beta session object, which clients echo back from
    # session.created: accepted and ignored, as the beta API did (no client can set them)
    "object", "id", "expires_at", "client_secret",
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
    """The server's recognizer, by the name ``session.created`` shows."""
    transcription_languages: tuple[str, ...] = ("en",)
    """The languages it transcribes (``input_config.recognizer_languages``)."""
    transcription: Transcription | None = field(default_factory=lambda: Transcription(""))
    """What the client asked of transcription; None: no transcription events (the server
    still transcribes). The default: the server's recognizer, no language set."""
    max_tokens_cap: int = 1024
    fixed_output_rate: int | None = None
    """Set by transports with their own codec (WebRTC: Opus at 48 kHz)."""
    server_tools: list[str] = field(default_factory=list)
    """Names of the server's own tools (the model may call them too; a client's may not clash)."""
    engines: dict[str, str] = field(default_factory=lambda: {"cascade": ""})
    """The engines a client may choose (``session.engine``) → each one's model name (a
    ``session.model`` equal to it chooses that engine too)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        own = self.settings.voice
        if not self.voices:
            self.voices = {own: own, **dict.fromkeys(OPENAI_VOICES, own)}
        self.voice = self.voice or own
        if self.transcription is not None and not self.transcription.model:
            self.transcription = Transcription(self.transcription_model)

    @property
    def recognizer(self) -> Recognizer:
        return Recognizer(self.transcription_model, self.transcription_languages)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "type": "realtime",
            "model": self.model,
            "instructions": s.instructions,
            "output_modalities": ["text"] if s.text_only else ["audio"],
            "max_output_tokens": s.generation.max_tokens,
            "tools": [describe_tool(t) for t in s.generation.tools],
            "tool_choice": describe_choice(s.generation.tool_choice),
            "audio": {
                "input": {
                    "format": self.input_format.describe(),
                    "transcription": describe_transcription(self.transcription),
                    "noise_reduction": None,
                    "turn_detection": describe_turn_detection(s),
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
                s.generation = parse_max_tokens(
                    session[key], s.generation, self.max_tokens_cap, key
                )
        self._apply_tools(session)
        audio = get(session, "audio", dict, path="session", default={})
        audio_in = get(audio, "input", dict, path="session.audio", default={})
        audio_out = get(audio, "output", dict, path="session.audio", default={})
        _refuse_unsupported(session, audio_in)
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
        g711 = self.input_format.type != PCM.type and self.fixed_output_rate is None
        same = self.input_format.type == self.output_format.type
        s.wire_format = self.input_format.type if g711 and same else ""
        for container, param in ((audio_in, "session.audio.input"), (session, "session")):
            if "turn_detection" in container:
                self._apply_vad(container["turn_detection"], f"{param}.turn_detection")
        for container, key in ((audio_in, "transcription"), (session, "input_audio_transcription")):
            if key in container:
                param = f"session.audio.input.{key}" if container is audio_in else f"session.{key}"
                self.transcription = apply_transcription(
                    container[key], param, self.transcription, self.recognizer
                )
        for container, param in ((audio_out, "session.audio.output"), (session, "session")):
            voice = container.get("voice")
            if voice is not None:
                self.voice = parse_voice(voice, f"{param}.voice", self.voices)
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
            if value is not None:
                self.settings.text_only = parse_modalities(value, f"session.{key}")
        if "model" in session:
            self._check_model(get(session, "model", str, path="session"))
        if "engine" in session:
            self.settings.engine = self._check_engine(session["engine"])

    def _check_engine(self, value: Any) -> str:
        if isinstance(value, str) and value in self.engines:
            return value
        raise ProtocolError(
            f"session.engine {short_repr(value)} is not served here: use"
            f" {' or '.join(repr(e) for e in self.engines)}",
            code="invalid_value",
            param="session.engine",
        )

    def _check_model(self, model: str) -> None:
        """This server's model name, or an OpenAI realtime model's (served by the local
        cascade: a client written for OpenAI runs unchanged)."""
        for engine, name in self.engines.items():
            if name and model == name:
                self.settings.engine = engine  # a remote engine's model: that engine replies
                return
        if model != self.model and not model.startswith(OPENAI_REALTIME_MODELS):
            raise ProtocolError(
                f"model {short_repr(model)} is not served here: use {self.model!r} (or an"
                " OpenAI realtime model name, served by this server's model)",
                code="invalid_value",
                param="session.model",
            )

    def _apply_tools(self, session: dict[str, Any]) -> None:
        g = self.settings.generation
        if "tools" in session:
            g.tools = parse_tools(session["tools"], "session.tools")
        if "tool_choice" in session:
            g.tool_choice = parse_tool_choice(session["tool_choice"], "session.tool_choice")
        check_choice(g.tools, self.server_tools, g.tool_choice, "session.tool_choice")

    def _apply_vad(self, value: Any, param: str) -> None:
        apply_turn_detection(value, param, self.settings)


def parse_voice(value: Any, param: str, voices: dict[str, str]) -> str:
    """A voice name (or ``{"id": name}``) that ``voices`` knows."""
    name = value.get("id") if isinstance(value, dict) else value
    if isinstance(name, str) and name in voices:
        return name
    raise ProtocolError(
        f"{param}: unknown voice {short_repr(name)}; the voices are {', '.join(sorted(voices))}",
        code="invalid_value",
        param=param,
    )


def parse_max_tokens(
    value: Any, current: GenerationOptions, cap: int, key: str
) -> GenerationOptions:
    if value == "inf":
        return replace(current, max_tokens=cap)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise ProtocolError(
            f"{key} must be an integer between 1 and 4096, or 'inf'",
            code="invalid_value",
            param=f"session.{key}",
        )
    return replace(current, max_tokens=min(value, cap))


def parse_modalities(value: list[Any], param: str) -> bool:
    """``["audio"]`` (speech, with its transcript) or ``["text"]``; True for text only."""
    if not value or any(v not in ("text", "audio") for v in value):
        raise ProtocolError(
            f"{param} must be ['audio'] or ['text']", code="invalid_value", param=param
        )
    return "audio" not in value


def describe_tool(spec: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "name": spec.name,
        "description": spec.description,
        "parameters": spec.parameters,
    }


def describe_choice(choice: str) -> Any:
    return choice if choice in TOOL_CHOICES else {"type": "function", "name": choice}


def _refuse_unsupported(session: dict[str, Any], audio_in: dict[str, Any]) -> None:
    """Fields whose OpenAI meaning this server does not implement: refused by name when set to
    anything but their default, never silently ignored."""
    nr = "there is no noise filter"
    checks = (
        ("prompt", session.get("prompt"), None, "stored prompt templates are OpenAI's"),
        ("reasoning", session.get("reasoning"), None, "the model has no reasoning effort"),
        ("parallel_tool_calls", session.get("parallel_tool_calls", True), True,
         "a reply makes every call the model emits"),
        ("tracing", session.get("tracing"), None, "there is no tracing service here"),
        ("include", session.get("include") or None, None, "logprobs are not available"),
        ("truncation", session.get("truncation", "auto"), "auto", "the prompt is always fitted"),
        ("audio.input.noise_reduction", audio_in.get("noise_reduction"), None, nr),
        ("input_audio_noise_reduction", session.get("input_audio_noise_reduction"), None, nr),
    )  # fmt: skip
    for name, value, default, why in checks:
        if value != default:
            raise ProtocolError(
                f"session.{name} {short_repr(value)} is not supported here ({why}); leave it"
                f" {'unset' if default is None else repr(default)}",
                code="unsupported_parameter",
                param=f"session.{name}",
            )
