"""A session's settings, in one place: what a client may change (:class:`SessionSettings`), the
bounds of a session (:class:`SessionLimits`) and the latency techniques (:class:`Tuning`).

The defaults here are the production defaults: ``voice/config.py`` takes its defaults from these
classes (and from :class:`~pipeline.turns.TurnSettings`, :class:`~pipeline.reply.ReplySettings`,
:class:`~pipeline.endpointing.EndpointSettings`, :class:`~pipeline.engines.GenerationOptions`), so
a unit test that builds a session with defaults runs what the server runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .backchannel import BackchannelSettings
from .context import Item
from .endpointing import EndpointSettings
from .engines import GenerationOptions
from .turns import TurnSettings

ASR_TIMEOUT_SPAN_S = 30.0
"""``SessionLimits.asr_timeout`` is per this much audio (Whisper's window)."""


@dataclass(slots=True)
class SessionSettings:
    """What a client may change with ``session.update``."""

    instructions: str = (
        "You are a friendly voice assistant. Answer in one or two short sentences,"
        " in plain words, without lists or markdown."
    )
    turn_detection: TurnSettings | None = field(default_factory=TurnSettings)
    """None: manual turns (the client commits and asks for responses)."""
    create_response: bool = True
    interrupt_response: bool = True
    output_rate: int = 24_000
    voice: str = "joe"
    """The server voice replies are spoken with (a name the TTS engine knows)."""
    speed: float = 1.0
    """Speaking rate (1.0: the voice's own; 1.5 is half as fast again)."""
    text_only: bool = False
    """``output_modalities: ["text"]``: replies are text, nothing is synthesized."""
    apology: str = ""
    """Said as is (synthesized, no LLM) when a spoken reply fails before any of it was heard,
    so that a caller with no error channel (a phone call) is not left in silence. Empty: the
    failure is only reported (an ``error`` event where the transport has one)."""
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    engine: str = "cascade"
    """Who replies: the local ``cascade``, or a remote realtime model (``openai-realtime``,
    ``gemini-live``; ``pipeline.handoff``)."""
    wire_format: str = ""
    """The caller's audio both ways is G.711 on the wire (``audio/pcmu``, ``audio/pcma``: a
    phone call): a remote engine that accepts it gets and sends it as is. Empty: PCM."""


@dataclass(slots=True)
class SessionLimits:
    """Bounds of one session; each has a finite default (see the README)."""

    max_pending_events: int = 4096
    """Events waiting for the transport; past it the client is too slow and the session closes."""
    max_pending_input_ms: int = 10_000
    """Caller audio waiting for the VAD; audio beyond it (sent faster than real time) is dropped."""
    max_input_buffer_s: float = 60.0
    """Audio held for one turn; a longer turn is ended there (manual mode: appends are refused)."""
    asr_timeout: float = 30.0
    """Seconds for one transcription of up to ``ASR_TIMEOUT_SPAN_S`` of audio; longer audio
    gets this for each started span (it is transcribed in pieces, in turn with other sessions)."""
    judge_timeout: float = 1.0
    """An end-of-turn judgement later than this is skipped (the words alone decide)."""
    truncation_memory: int = 16
    """Replies whose audio/text alignment is kept for ``conversation.item.truncate``."""
    max_out_of_band: int = 4
    """Out-of-band responses (``conversation: "none"``) running at once."""
    max_tool_rounds: int = 4
    """Server-side tool calls answered in a row before the model is not asked again."""
    max_conversation_bytes: int = 1 << 20
    """Text held by the conversation (UTF-8 bytes). A client item that would pass it is refused
    (``conversation_too_large``); past it, the oldest spoken turns are forgotten."""
    max_session_s: float = 3600.0
    """Longest session (seconds from its start); then it closes with "session length limit
    (…) reached" (``pipeline.deadlines``). 0: no limit."""
    idle_s: float = 300.0
    """A session that has had no client message and no audio for this long closes with "idle
    timeout (…)". 0: no limit."""


@dataclass(slots=True)
class Tuning:
    """Latency techniques, each a switch so a benchmark can compare them in one run."""

    early_asr: bool = True
    """Transcribe at the tentative end of speech, before the turn is confirmed."""
    speculative_reply: bool = True
    """Start the LLM and TTS on that transcript; play only once the turn is confirmed."""
    reply_beside_judge: bool = True
    """With a judge that scores beside replies (``TurnJudge.beside_replies``), ask for the
    speculative reply together with the end-of-turn judge, not after its answer."""
    eot_adaptive: bool = True
    """Let the words heard so far set the silence that ends the turn (``endpoint``) instead of
    the fixed ``silence_duration_ms``; needs ``early_asr``."""
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)
    pause_on_onset: bool = True
    """Hold the agent's audio from the caller's first speech window; go on if it was a click or
    a cough. The reply is cancelled once the speech lasts ``interrupt_min_speech_ms`` or, with
    ``backchannel.enabled``, once its words say it was not a backchannel."""
    hold_threshold: float = 0.15
    """With ``pause_on_onset``: hold the agent's audio already at a window this probable,
    below the turn's ``threshold`` (Silero's probability rises over the first 30-130 ms of a
    word); go on if the threshold is not reached within 96 ms (``turns.py``). 0: at the
    threshold."""
    backchannel: BackchannelSettings = field(default_factory=BackchannelSettings)
    """Speech over the agent: a backchannel ("mm-hmm", "yeah", a laugh) resumes the held reply
    and stays out of the conversation; other words cancel it (``backchannel.py``)."""
    early_pause_db: float = 35.0
    """The tentative pause (early ASR, speculative reply) from the loudness too: windows this
    many dB below the utterance's loudest count as quiet while the VAD's probability is still
    falling (``turns.py``); 0: the VAD alone."""
    silence_from_loudness_ms: int = 150
    """With ``early_pause_db``: the silence that ends a turn counts from where the sound fell,
    at most this many ms before the VAD's silence (``turns.py``); 0: from the VAD's."""
    interim_asr_ms: int = 0
    """Streaming ASR: while the caller speaks, transcribe the words so far after every this
    many ms of new speech (0: off), when the recognizer is idle. Each result is sent as an
    ``InterimTranscript`` and put to the end-of-turn judge, which leaves the words' prompt in
    the LLM's cache for the reply."""


@dataclass(slots=True)
class ResponseOptions:
    """What one ``response.create`` may change for that response only (None: the session's)."""

    instructions: str | None = None
    generation: GenerationOptions | None = None
    """Tools, tool choice, the token limit and the temperature of this response."""
    text_only: bool | None = None
    voice: str | None = None
    """The server voice to speak with."""
    client_voice: str | None = None
    """The voice name the client used, reported back."""
    out_of_band: bool = False
    """``conversation: "none"``: the response is not part of the conversation, and may run
    beside the conversation's own."""
    input: list[Item] | None = None
    """The context of this response instead of the conversation's items."""
    metadata: dict[str, str] | None = None
    says: str | None = None
    """Say exactly this instead of asking the LLM (the apology after a failed reply)."""
    tool_choice_after_tools: bool = False
    """The server's follow-up once its own tools answered: a forced ``tool_choice``
    (``required``, a name) becomes ``auto`` for it, or every reply would call again."""
