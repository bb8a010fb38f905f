"""The one exception root of the project.

::

    VoiceError
    ├── ConfigError            bad configuration (a key, a value, a missing model)
    ├── EngineError            an engine failed (ONNX, CTranslate2, llama.cpp, HTTP); ``retryable``
    │   └── EngineTimeout      an engine did not answer in time (retryable)
    ├── ProtocolError          a client sent something we cannot accept; ``code`` and ``event_id``
    │   └── LimitExceeded      a documented limit was crossed (message size, buffer, rate)
    └── ToolError              a server-side tool call failed; its message is for the model

Errors raised by third-party libraries are translated into this tree at the boundary where they are
caught (the engine modules and the transport adapters), so callers only handle ``VoiceError``.
"""

from __future__ import annotations

import json


class VoiceError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(VoiceError):
    """The configuration is invalid or names something that does not exist."""


class EngineError(VoiceError):
    """An engine (VAD, ASR, LLM, TTS) failed.

    ``retryable`` says whether the same call may succeed later (a timeout, a remote 5xx) or
    not (a missing model, a malformed request).
    """

    def __init__(self, message: str, *, engine: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.engine = engine
        self.retryable = retryable


class EngineTimeout(EngineError):
    """An engine did not produce its next result within its timeout."""

    def __init__(self, message: str, *, engine: str) -> None:
        super().__init__(message, engine=engine, retryable=True)


class ProtocolError(VoiceError):
    """A client event or frame that the server rejects; the session usually goes on.

    ``code`` is a short machine-readable string naming what is wrong (``invalid_json``,
    ``unknown_event``, ``invalid_value`` …; never the error *type*) and
    ``event_id`` the id of the client event that caused it, when it had one.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        event_id: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.event_id = event_id
        self.param = param


class LimitExceeded(ProtocolError):
    """A documented limit was crossed: message size, buffered audio, rate."""


class ToolError(VoiceError):
    """A server-side tool call failed: an unknown tool, arguments that do not fit, the timeout,
    an exception in the tool. The message is written for the model, which reads it as the
    call's output (:meth:`output`) and may try again or tell the caller."""

    def __init__(self, message: str, *, tool: str) -> None:
        super().__init__(message)
        self.tool = tool

    def output(self) -> str:
        """The ``function_call_output`` text for this failure: ``{"error": "..."}``."""
        return json.dumps({"error": str(self)}, ensure_ascii=False)
