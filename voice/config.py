"""Configuration: defaults, then a TOML file, then ``VOICE_SECTION_KEY`` environment variables,
then command-line flags (flags win). Every key is a field below with its documentation; the README
table is generated from them (``voice config --markdown``) and a test keeps the two in sync."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from pipeline.backchannel import (
    DEFAULT_STOP_WORDS,
    DEFAULT_WORDS,
    BackchannelSettings,
    parse_words,
)
from pipeline.endpointing import EndpointSettings
from pipeline.engines import GenerationOptions
from pipeline.errors import ConfigError
from pipeline.handoff.base import (
    ENGINES,
    GEMINI_LIVE,
    OPENAI_REALTIME,
    TURN_DETECTION,
    HandoffSettings,
    UpstreamSettings,
)
from pipeline.handoff.policy import parse_dtmf
from pipeline.reply import ReplySettings
from pipeline.settings import SessionLimits, SessionSettings, Tuning
from pipeline.tools import DEFAULT_TIMEOUT_S as DEFAULT_TOOL_TIMEOUT_S
from pipeline.turns import TurnSettings
from transports.realtime.config import OPENAI_VOICES

# The pipeline's own defaults are the server's: one place for each fact.
_SESSION, _LIMITS, _TUNING = SessionSettings(), SessionLimits(), Tuning()
_BC = BackchannelSettings()
_TURNS, _REPLY, _EOT, _GEN = (
    TurnSettings(),
    ReplySettings(),
    EndpointSettings(),
    GenerationOptions(),
)


def doc(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda: default.copy(), metadata={"doc": text}, **kw)
    return field(default=default, metadata={"doc": text}, **kw)


@dataclass(slots=True)
class ServerConfig:
    host: str = doc("Address to listen on.", "127.0.0.1")
    port: int = doc("TCP port.", 8080)
    max_sessions: int = doc(
        "Concurrent sessions; more are refused with HTTP 503. The default is the measured"
        " capacity of 2 CPU cores at voice-to-voice p95 <= 1,200 ms (`voice bench --concurrency`).",
        4,
    )
    api_keys: str = doc(
        "Comma-separated API keys a client must send (`Authorization: Bearer <key>`, or a"
        " browser WebSocket's subprotocol `openai-insecure-api-key.<key>`); empty, with no"
        " `api_keys_file` either = authentication off (only on a loopback address, see"
        " `allow_unauthenticated`).",
        "",
    )
    api_keys_file: str = doc(
        "A file of more API keys, one a line (`#` comments); read at start.", ""
    )
    allow_unauthenticated: bool = doc(
        "Listen on a non-loopback address without API keys (otherwise `voice serve` refuses).",
        False,
    )
    allowed_origins: str = doc(
        "Comma-separated origins (`https://app.example.com`) whose pages may open sessions;"
        " empty = the server's own origin only; `*` = any. Requests without `Origin` (not a"
        " browser) are not affected.",
        "",
    )
    max_sessions_per_key: int = doc(
        "Concurrent sessions per API key (a client secret's count against the key that minted"
        " it); more get HTTP 429. Not applied when authentication is off.",
        8,
    )
    max_client_secrets: int = doc(
        "Client secrets (`POST /v1/realtime/client_secrets`) live at once; more get HTTP 429.",
        1024,
    )
    heartbeat_s: float = doc(
        "Seconds between WebSocket pings; a client that does not answer within half of it is"
        " dropped.",
        30.0,
    )
    max_event_bytes: int = doc(
        "Largest client event accepted (bytes); a larger one gets an `error` event.", 4 << 20
    )
    max_frame_bytes: int = doc(
        "Largest WebSocket frame read at all; a larger one closes the connection (1009).", 16 << 20
    )
    log_level: str = doc("`debug`, `info`, `warning` or `error`.", "info")
    log_format: str = doc(
        "`text` (one line per record) or `json` (one JSON object per line, with `session` when"
        " the record belongs to one).",
        "text",
    )
    drain_timeout_s: float = doc(
        "On SIGTERM or SIGINT: seconds the active sessions may go on (new ones are refused with"
        " HTTP 503) before they are closed with the reason `server shutting down`.",
        30.0,
    )
    close_timeout_s: float = doc(
        "At shutdown, seconds the closed sessions have to say goodbye and end.", 5.0
    )
    model_name: str = doc("Model name reported in `session.created`.", "voice-local")
    warm_up: bool = doc("Run every model once before saying ready.", True)
    gc_freeze: bool = doc(
        "Once ready, take the objects made while starting (the imports, the models' Python"
        " side: ~150,000) out of the garbage collector's scans (`gc.freeze`). A full collection"
        " holds the GIL while it scans them — 70 ms idle on 2 cores, stalling every turn in"
        " progress; frozen, it scans only what the sessions made since.",
        True,
    )
    transcript_dir: str = doc(
        "Folder where each ended session's transcript is written as JSON; empty = keep only the"
        " last `transcripts_kept` in memory (and the log).",
        "",
    )
    transcripts_kept: int = doc("Ended sessions whose transcripts stay in memory.", 100)
    data_dir: str = doc(
        "Folder of the server's own files: the session store's SQLite file (`sessions.db`) and"
        " the audio recordings (`audio/<session id>/`).",
        "./data",
    )
    tools: str = doc(
        "Comma-separated Python modules whose `@tool` functions the server runs itself when the"
        " LLM calls them (`voice serve --tools`); e.g. `pipeline.tools.examples` (the time,"
        " ending the call). Empty = none.",
        "",
    )


@dataclass(slots=True)
class AsrConfig:
    model: str = doc(
        "`tiny.en` (bundled), `base` (bundled, multilingual) or a CTranslate2 model folder.",
        "tiny.en",
    )
    device: str = doc("`cpu`, `cuda` or `auto` (CUDA when present).", "auto")
    compute_type: str = doc(
        "CTranslate2 compute type; `default` = int8 on CPU, float16 on CUDA.", "default"
    )
    language: str = doc("Language code for multilingual models; empty = detect.", "en")
    beam_size: int = doc(
        "Beam size (1 = greedy, fastest). A wider beam hears a few more words right and adds"
        " 14-26 ms to every transcript on 2 cores (`benchmarks/README.md`, Whisper's encoder"
        " window).",
        1,
    )
    threads: int = doc(
        "CPU threads per transcription (1: a short turn is as fast on one as on two, and never"
        " waits at OpenMP's barriers for a core another caller's work holds).",
        1,
    )
    workers: int = doc(
        "Concurrent transcriptions; jobs wait in one queue served round-robin between sessions.", 1
    )
    max_pending: int = doc(
        "Transcription jobs (audio pieces of at most 30 s) one session may have waiting for"
        " the ASR; past it a transcription fails with an `error` event.",
        8,
    )
    fit_window: bool = doc(
        "Run Whisper's encoder on the utterance plus `window_pad_s` instead of a 30 s window"
        " (about 4x faster; a result that loops is redone with 30 s).",
        True,
    )
    window_pad_s: float = doc("Silence after the utterance in a fitted window (seconds).", 5.0)


@dataclass(slots=True)
class LlmConfig:
    engine: str = doc(
        "`llama` (embedded llama.cpp) or `openai` (any OpenAI-compatible server).", "llama"
    )
    model_path: str = doc("GGUF file for `llama`; empty = bundled SmolLM2-135M-Instruct.", "")
    requantize: str = doc(
        "`llama`: convert the GGUF's weights to `q8_0` or `q4_0` once, at the first start (cached"
        " in `~/.cache/voice-agent` by the file's content, so installing again re-uses it;"
        " 0.5 s); empty = as shipped. llama.cpp has no batched Q4_1"
        " kernels on x86, so the bundled Q4_1 model evaluates a prompt at almost a generated"
        " token's cost per token; `q8_0` keeps its outputs (perplexity +0.4%, the end-of-turn"
        " judge's probabilities within a few %) and evaluates prompts 1.6x faster (+45 MB of"
        " memory); `q4_0` 2x, but lossy (perplexity up to +22%).",
        "q8_0",
    )
    n_ctx: int = doc(
        "Context window (tokens): the model's for `llama`, the endpoint's for `openai`. Prompts"
        " are fitted to it less the reply's `max_tokens`: oldest turns dropped first.",
        2048,
    )
    threads: int = doc("llama.cpp threads for generation.", 1)
    batch_threads: int = doc(
        "llama.cpp threads for prompt evaluation (it runs once the transcript is known, when the"
        " ASR has released its cores).",
        2,
    )
    batch_threads_replies: bool = doc(
        "With `parallel` > 1: a step of several replies' tokens also gets `batch_threads` (under"
        " `batch_threads_alone`'s rule): it costs about the number of replies times one token"
        " (8 replies: 87 ms on one thread, 60 on two).",
        True,
    )
    batch_threads_alone: bool = doc(
        "With `parallel` > 1: a prompt gets `batch_threads` only while no other engine job (a"
        " caller's speech recognition or synthesis) is on the CPU, else `threads`: threads that"
        " meet at a barrier after every operation wait for a busy core at each one.",
        True,
    )
    gpu_layers: int = doc("Layers offloaded to the GPU (llama.cpp built with CUDA).", 0)
    parallel: int = doc(
        "Conversations `llama` evaluates together in one context (batched decoding: a caller's"
        " prompt is evaluated beside the others' replies, not after them), each with"
        " `parallel_ctx` tokens of its own; 1 = one reply at a time, in `n_ctx`.",
        8,
    )
    parallel_ctx: int = doc(
        "With `parallel` > 1: each conversation's context window (tokens); the KV memory is"
        " `parallel` x `parallel_ctx` x 23 KB for the bundled model.",
        1024,
    )
    keep_conversations: bool = doc(
        "With `parallel` > 1: a job takes the free slot where it destroys the least cache no"
        " other slot holds (an empty one, a copy, its own conversation's, one unused for a"
        " while), copying the system prompt it shares with the others, so callers keep their"
        " conversations cached; off = the free slot sharing the longest prefix, else the least"
        " recently used (another caller's conversation is then evaluated again at its next"
        " turn).",
        True,
    )
    first_words_chunk: int = doc(
        "With `parallel` > 1: while a reply makes its first 12 tokens (its first words), a step"
        " evaluates at most this many tokens of other callers' prompts beside it (else 256), so"
        " those words do not wait for a whole prompt at each token; 0 = off.",
        64,
    )
    tail_rate: float = doc(
        "With `parallel` > 1: tokens a second a reply read aloud is paced at after its first 24"
        " (speech is 3-4), so the cores go to other callers' first words (and their speech"
        " recognition); text replies and tool-call arguments are never paced; 0 = off.",
        8.0,
    )
    tail_yield_rate: float = doc(
        "With `tail_rate`: while another caller waits for their first words (their prompt being"
        " evaluated, or their reply's first 12 tokens), a tail goes at only this many tokens a"
        " second (still faster than speech), so those words' steps are not lengthened by tails"
        " far ahead of their voice; 0 = `tail_rate` throughout.",
        5.0,
    )
    base_url: str = doc("Endpoint for `openai`, e.g. `http://127.0.0.1:8000/v1`.", "")
    model: str = doc("Model name for `openai`.", "")
    api_key: str = doc("API key for `openai` (also read from `OPENAI_API_KEY`).", "")
    max_tokens: int = doc("Longest reply (tokens).", _GEN.max_tokens)
    tool_choice: str = doc(
        "Default `tool_choice`: `auto`, `none`, `required` or a tool's name (a Realtime client"
        " may change it per session or response).",
        _GEN.tool_choice,
    )
    temperature: float = doc("Sampling temperature.", _GEN.temperature)
    first_token_timeout: float = doc("Seconds to wait for the first token.", 20.0)
    next_token_timeout: float = doc("Seconds to wait for each next token.", 10.0)


@dataclass(slots=True)
class TtsConfig:
    voice_path: str = doc("Piper `.onnx` voice; empty = bundled `en_US-joe-medium`.", "")
    voice_name: str = doc("Name of that voice, the server's default.", "joe")
    voices: str = doc(
        "More Piper voices a client may choose, `name=/path/voice.onnx,...` (each with its"
        " `.onnx.json` beside it); empty = only `voice_name`.",
        "",
    )
    voice_map: str = doc(
        "The voice a Realtime client gets for each OpenAI voice name, `alloy=joe,ash=joe,...`"
        " (values: `voice_name` or a name in `voices`); a client may also choose a server voice"
        " by its own name, and any other name is refused.",
        ",".join(f"{name}={_SESSION.voice}" for name in OPENAI_VOICES),
    )
    length_scale: float = doc(
        "Phoneme duration at a client's `speed` 1.0 (< 1 is faster; `speed` divides it); 0 keeps"
        " each voice's own.",
        0.0,
    )
    threads: int = doc("onnxruntime threads per synthesis.", 1)
    workers: int = doc(
        "Syntheses at once at the server's priority, every session's clauses in one queue, the"
        " clause needed soonest first (a reply's first, then tails by when their audio runs"
        " out); with `ahead_workers`, these only make clauses already due; without, one of two"
        " or more does, so a first clause never waits behind a tail.",
        1,
    )
    ahead_workers: int = doc(
        "Syntheses at once of clauses not needed yet (a reply's later clauses, made while the"
        " earlier ones play), `ahead_nice` below the server's priority; 0 = `workers` make"
        " them too.",
        1,
    )
    ahead_nice: int = doc(
        "Nice levels (0-19, Linux) the `ahead_workers` run below the server, so that work only"
        " takes the cores other callers' first words do not need.",
        10,
    )
    timeout: float = doc("Seconds to wait for one clause's audio.", _REPLY.tts_timeout)

    def voice_paths(self) -> dict[str, str]:
        """Every server voice: its name → its `.onnx` file (empty: the bundled voice)."""
        paths = {self.voice_name: self.voice_path}
        for name, path in _pairs(self.voices, "tts.voices").items():
            if name in paths:
                raise ConfigError(f"tts.voices: voice {name!r} is named twice")
            paths[name] = path
        return paths

    def voice_table(self) -> dict[str, str]:
        """The names a client may choose → the server voice each speaks with."""
        own = self.voice_paths()
        table = {name: name for name in own}
        for name, target in _pairs(self.voice_map, "tts.voice_map").items():
            if target not in own:
                raise ConfigError(
                    f"tts.voice_map: {name}={target}, but there is no voice {target!r}"
                    f" (voices: {', '.join(own)})"
                )
            table[name] = target
        return table


@dataclass(slots=True)
class VadConfig:
    model_path: str = doc("Silero ONNX model; empty = the one in the `silero-vad` package.", "")
    threshold: float = doc("Speech probability threshold.", _TURNS.threshold)
    hysteresis: float = doc(
        "Once speaking, a window still counts as speech down to `threshold - hysteresis`.",
        _TURNS.hysteresis,
    )
    min_speech_ms: int = doc("Speech needed before `speech_started`.", _TURNS.min_speech_ms)
    prefix_padding_ms: int = doc("Audio kept before the speech onset.", _TURNS.prefix_padding_ms)
    silence_duration_ms: int = doc("Silence that ends a turn.", _TURNS.silence_duration_ms)
    tentative_silence_ms: int = doc(
        "Silence after which ASR (and a speculative reply) starts.", _TURNS.tentative_silence_ms
    )
    interrupt_min_speech_ms: int = doc(
        "Speech needed to interrupt the agent (barge-in).", _TURNS.interrupt_min_speech_ms
    )
    early_pause_db: float = doc(
        "The tentative pause from the loudness too: after `tentative_silence_ms` of windows this"
        " many dB below the utterance's loudest, ASR starts while the VAD's probability is still"
        " falling (30-110 ms after the last sound on the harness's voices). 0 = the VAD alone.",
        _TUNING.early_pause_db,
    )
    silence_from_loudness_ms: int = doc(
        "With `early_pause_db`: the silence that ends a turn counts from where the sound fell"
        " below it, at most this many ms before the VAD's silence (Silero's probability trails"
        " the last sound by 30-110 ms on the harness's voices), so a pause is timed from the"
        " caller's last sound. 0 = from the VAD's silence.",
        _TUNING.silence_from_loudness_ms,
    )
    pause_on_onset: bool = doc(
        "Hold the agent's audio from the caller's first speech window (resumed if it was not"
        " speech); the reply is cancelled only after `interrupt_min_speech_ms`.",
        _TUNING.pause_on_onset,
    )
    hold_threshold: float = doc(
        "With `pause_on_onset`: hold the agent's audio already at a window whose speech"
        " probability reaches this, below `threshold` (Silero's probability needs 30-130 ms of a"
        ' word to reach it, longest on an "s"); it goes on if `threshold` does not follow'
        " within 96 ms. The turn still begins at `threshold`. 0 = at `threshold`.",
        _TUNING.hold_threshold,
    )
    backchannel: bool = doc(
        "Speech over the agent holds it until its words are known: a backchannel (`mm-hmm`,"
        " `yeah`, a laugh) resumes the reply and stays out of the conversation, other words"
        " cancel it. Off: any speech of `interrupt_min_speech_ms` cancels it.",
        _BC.enabled,
    )
    backchannel_max_ms: int = doc(
        "Speech over the agent longer than this interrupts without waiting for its words.",
        _BC.max_ms,
    )
    backchannel_max_words: int = doc("A backchannel has at most this many words.", _BC.max_words)
    backchannel_resume_silence_ms: int = doc(
        "A backchannel of words resumes the agent once the caller has been silent this long;"
        " speech again before that continues the overlap, judged again on all its words (one"
        " without words, a cough or a laugh, resumes it at once).",
        _BC.resume_silence_ms,
    )
    backchannel_unknown_max_words: int = doc(
        "Words outside both vocabularies a backchannel may hold (a misheard `mm-hmm`).",
        _BC.unknown_max_words,
    )
    backchannel_words: str = doc(
        "The backchannel vocabulary (words, comma- or space-separated).", DEFAULT_WORDS
    )
    backchannel_stop_words: str = doc(
        "Words that make speech over the agent an interruption, however short.",
        DEFAULT_STOP_WORDS,
    )
    eot_adaptive: bool = doc(
        "End the turn after a silence chosen by the words heard so far (below) rather than"
        " `silence_duration_ms` (which then only applies to clients that turn this off).",
        _TUNING.eot_adaptive,
    )
    eot_complete_ms: int = doc(
        "Silence after a finished question or exclamation.", _EOT.complete_ms
    )
    eot_statement_ms: int = doc("Silence after a statement ending in a period.", _EOT.statement_ms)
    eot_incomplete_ms: int = doc(
        "Silence after words that trail off (and, the, a comma …), or before they are known.",
        _EOT.incomplete_ms,
    )
    eot_llm: bool = doc(
        "Let the embedded LLM judge the words too: a request it finds complete ends after"
        ' `eot_complete_ms`, a question it finds unfinished ("Can you tell me?") waits'
        " `eot_statement_ms` (`llama` engine only; skipped while it is busy with a reply).",
        True,
    )
    eot_llm_complete: float = doc(
        "Probability (words, then their punctuation, then end of message) from which a sentence"
        " ending in a period is a finished turn.",
        _EOT.likely_complete,
    )
    eot_llm_unfinished: float = doc(
        "Probability below which a question is taken as unfinished.", _EOT.unlikely_complete
    )
    eot_llm_any_stop: bool = doc(
        "The judge reads a period as any full stop (. ? !): a question asked with a falling"
        ' voice, which Whisper writes with a period ("which planet is closest to the sun."),'
        " ends like a question.",
        True,
    )

    def backchannel_settings(self) -> BackchannelSettings:
        """The `backchannel*` keys as the listener's settings; raises :class:`ConfigError`."""
        settings = BackchannelSettings(
            enabled=self.backchannel,
            max_ms=self.backchannel_max_ms,
            max_words=self.backchannel_max_words,
            unknown_max_words=self.backchannel_unknown_max_words,
            resume_silence_ms=self.backchannel_resume_silence_ms,
            words=parse_words(self.backchannel_words),
            stop_words=parse_words(self.backchannel_stop_words),
        )
        try:
            settings.validate()
        except ValueError as exc:
            raise ConfigError(f"vad.{exc}") from None
        return settings


@dataclass(slots=True)
class PipelineConfig:
    instructions: str = doc("Default system instructions.", _SESSION.instructions)
    frame_ms: int = doc("Output frame length (ms).", _REPLY.frame_ms)
    lead_ms: int = doc(
        "Audio sent ahead of real time (ms), to absorb network jitter.", _REPLY.lead_ms
    )
    first_clause_chars: int = doc(
        "Shortest first piece of a reply sent to TTS at a comma.", _REPLY.first_clause_chars
    )
    min_clause_chars: int = doc(
        "Shortest later piece sent to TTS at a comma.", _REPLY.min_clause_chars
    )
    early_asr: bool = doc(
        "Transcribe at the tentative end of speech, before the turn ends.", _TUNING.early_asr
    )
    interim_asr_ms: int = doc(
        "Streaming ASR: while the caller speaks, transcribe the words so far after every this many"
        " ms of speech (0 = off); sent as `x.voice.input_audio_transcription.interim` and"
        " pre-evaluated by the LLM.",
        _TUNING.interim_asr_ms,
    )
    speculative_reply: bool = doc(
        "Start the LLM and TTS on that early transcript; play only once the turn is confirmed.",
        _TUNING.speculative_reply,
    )
    reply_beside_judge: bool = doc(
        "With the batched LLM (`llm.parallel` > 1): ask for the speculative reply together with"
        " the end-of-turn judge (their shared prompt evaluated once) instead of after its answer.",
        _TUNING.reply_beside_judge,
    )
    first_clause_words: int = doc(
        "Cut the first piece for TTS after this many words even without punctuation (0 = off).",
        _REPLY.first_clause_words,
    )
    starved_cut_ms: int = doc(
        "When a reply's audio has less than this left to play and the model has not reached a"
        " piece boundary (it writes slower than the voice speaks, or a run like `100000…`), its"
        " complete words go to TTS now instead of the caller hearing silence (0 = off).",
        _REPLY.starved_cut_ms,
    )
    starved_cut_behind: bool = doc(
        "Make that cut even while the synthesizer is behind (other callers' syntheses already"
        " due wait for it): the piece would wait behind them while more words come.",
        _REPLY.starved_cut_behind,
    )
    trim_leading_silence: bool = doc(
        "Drop the quiet start of a reply's first synthesized piece (Piper begins with 30-60 ms of"
        " near-silence), so the first sound leaves at once.",
        _REPLY.trim_leading_silence,
    )


@dataclass(slots=True)
class LimitsConfig:
    max_pending_input_ms: int = doc(
        "Caller audio ahead of real time, or waiting for the VAD, before audio is dropped.",
        _LIMITS.max_pending_input_ms,
    )
    max_input_buffer_s: float = doc(
        "Longest turn (s); manual mode refuses appends past it.", _LIMITS.max_input_buffer_s
    )
    max_pending_events: int = doc(
        "Server events queued for a slow client before closing it.", _LIMITS.max_pending_events
    )
    max_conversation_bytes: int = doc(
        "Text one conversation holds (UTF-8 bytes): a client item past it gets an `error`"
        " (`conversation_too_large`); spoken turns past it make the oldest items go.",
        _LIMITS.max_conversation_bytes,
    )
    asr_timeout: float = doc(
        "Seconds to wait for a transcription of up to 30 s of audio (longer audio: this much per"
        " started 30 s).",
        _LIMITS.asr_timeout,
    )
    max_out_of_band: int = doc(
        'Out-of-band responses (`conversation: "none"`) one session may run at once.',
        _LIMITS.max_out_of_band,
    )
    max_tool_rounds: int = doc(
        "Server-side tool calls answered in a row before the model is not asked again.",
        _LIMITS.max_tool_rounds,
    )
    judge_timeout: float = doc(
        "Seconds the end-of-turn judge may take; later, the words alone decide.",
        _LIMITS.judge_timeout,
    )
    tool_timeout: float = doc(
        "Seconds a server-side tool may run unless it sets its own `timeout_s`; past it the model"
        " gets an error as the call's output.",
        DEFAULT_TOOL_TIMEOUT_S,
    )
    max_session_s: float = doc(
        "Longest session (seconds); then it closes with the reason `session length limit (…)"
        " reached`. 0 = none.",
        _LIMITS.max_session_s,
    )
    idle_s: float = doc(
        "A session with no client message and no audio for this long (seconds) closes with the"
        " reason `idle timeout (…)`. 0 = none.",
        _LIMITS.idle_s,
    )


@dataclass(slots=True)
class WebRtcConfig:
    ice_servers: str = doc(
        "Comma-separated STUN/TURN URLs (`stun:host:3478,turn:host:3478`); empty = none, so"
        " nothing is contacted outside the two peers.",
        "",
    )
    ice_username: str = doc("Username for the TURN servers.", "")
    ice_credential: str = doc("Credential for the TURN servers.", "")
    connect_timeout: float = doc(
        "Seconds for ICE and DTLS to connect before a call is dropped.", 10.0
    )
    max_pending_calls: int = doc(
        "Calls answered but not yet connected (they do not count as sessions until they"
        " connect); more offers get HTTP 503.",
        4,
    )
    max_queued_ms: int = doc(
        "Reply audio queued for the WebRTC track before old frames drop.", 1000
    )
    echo_cancellation: bool = doc(
        "Also take the agent's voice out of the caller's audio on the server (WebRTC's echo"
        " canceller, the reply audio sent on the track as the reference), for callers whose"
        " browser does not (`echoCancellation: false`, as the web client asks when its echo"
        " cancellation box is unticked).",
        False,
    )
    frame_ms: int = doc(
        "Opus frame length both ways, 10 or 20 ms: the agent's voice leaves in frames this long"
        " and the answer asks the browser for the same (`a=ptime`); 10 lets the reply start in"
        " the next 10 ms slot and the browser's jitter buffer hold one 10 ms packet.",
        10,
    )
    dtx: bool = doc(
        "Discontinuous transmission (RFC 7587): 60 ms after the agent's last speech the track"
        " sends a DTX packet, then one every 400 ms and nothing else until the next speech, which"
        " leaves at once with its RTP time jumping over the pause. An idle call then costs the"
        " server and the caller no packet stream (server 16 -> 8 % of a core per idle call on 2"
        " cores). From the caller's speech until the reply's audio starts the track streams"
        " silence again, so a reply never starts a talk spurt after comfort noise in the"
        " caller's jitter buffer (~40 ms later in Chromium; `webrtc.dtx_wake`). Off: a packet"
        " every frame, silence included.",
        True,
    )
    dtx_wake: bool = doc(
        "With `webrtc.dtx`: from the caller's first speech until the reply's audio starts the"
        " track streams silence, not DTX (off: the reply starts a talk spurt after the pause).",
        True,
    )

    def check(self) -> None:
        """Raise :class:`ConfigError` for a frame length the track cannot send."""
        if self.frame_ms not in (10, 20):
            raise ConfigError(f"webrtc.frame_ms {self.frame_ms}: use 10 or 20")


@dataclass(slots=True)
class StoreConfig:
    enabled: bool = doc(
        "Write every session's record (transcript, responses, metrics, errors) as it happens.",
        True,
    )
    url: str = doc(
        "Where: empty = SQLite `<server.data_dir>/sessions.db`; `sqlite:///path.db` (relative),"
        " `sqlite:////abs/path.db`; `postgresql://user:pass@host/db` (the `postgres` extra).",
        "",
    )
    max_queued: int = doc(
        "Records (and audio chunks) waiting for the writer; past it they are dropped and counted,"
        " never waited for.",
        10_000,
    )
    timeout: float = doc(
        "Seconds a database connection or write may take (SQLite's busy timeout; PostgreSQL's"
        " connect, statement and lock timeouts).",
        10.0,
    )
    record_audio: bool = doc(
        "Record both sides of every call as WAV files under `<server.data_dir>/audio/`.", False
    )
    max_audio_s: float = doc("Seconds of audio recorded per side and session, at most.", 3600.0)


@dataclass(slots=True)
class TwilioConfig:
    auth_token: str = doc(
        "The Twilio account's auth token: every Media Streams connection must carry a valid"
        " `X-Twilio-Signature` (else HTTP 403). Empty = no signature check, and with API keys on"
        " the endpoint wants a key, which Twilio cannot send: set this to take Twilio calls.",
        "",
    )
    public_url: str = doc(
        "The server's base URL as Twilio reaches it (`wss://voice.example.com`), which the"
        " signature covers; empty = read from the request (wrong behind a proxy).",
        "",
    )
    apology: str = doc(
        "Said to the caller when a reply fails before any of it was heard (an engine failed or"
        " timed out): a phone call has no error channel, and silence leaves the caller waiting."
        " Empty = say nothing.",
        "Sorry, something went wrong on my side. Could you say that again?",
    )
    echo_cancellation: bool = doc(
        "Take the agent's own voice out of the caller's audio before the VAD hears it (WebRTC's"
        " echo canceller, the agent's outgoing audio as the reference), so a caller on a"
        " speakerphone does not cut the agent off with its echo.",
        True,
    )


@dataclass(slots=True)
class CallsConfig:
    webhook_url: str = doc(
        "Told of each incoming phone call (SIP, Twilio) with a POST of OpenAI's"
        " `realtime.call.incoming` event; the call then waits for `POST"
        " /v1/realtime/calls/{call_id}/accept` or `/reject`. Empty = calls are accepted at once"
        " with the server's defaults.",
        "",
    )
    webhook_secret: str = doc(
        "Signs each webhook delivery as OpenAI does (Standard Webhooks headers `webhook-id`,"
        " `webhook-timestamp`, `webhook-signature`); `whsec_<base64>` or plain text. Empty ="
        " unsigned.",
        "",
    )
    accept_timeout: float = doc(
        "Seconds an announced call waits to be accepted or rejected; then it is rejected (408).",
        10.0,
    )
    webhook_timeout: float = doc(
        "Seconds for the webhook's receiver to answer the POST with a 2xx; otherwise the call"
        " is rejected at once.",
        5.0,
    )
    max_calls: int = doc("Live calls (every transport) tracked for call control.", 64)
    max_watcher_events: int = doc(
        "Events queued for one `?call_id=` watcher; past it that watcher is dropped (the call"
        " goes on).",
        1024,
    )


@dataclass(slots=True)
class SipConfig:
    enabled: bool = doc(
        "Answer SIP calls (UDP, TCP): a softphone, a PBX or a trunk calls the agent directly.",
        True,
    )
    host: str = doc("Address the SIP agent and its RTP ports listen on.", "127.0.0.1")
    port: int = doc("UDP (and TCP) port of the SIP agent (0 = any free port).", 5060)
    tcp: bool = doc(
        "Take SIP over TCP too, on the same address and port (RTP stays UDP); off = UDP only.",
        True,
    )
    tcp_idle_timeout_s: float = doc(
        "A SIP TCP connection silent this long, with no call on it, is closed.", 60.0
    )
    tcp_max_connections: int = doc(
        "SIP TCP connections at once; past it a new one is closed as it is accepted.", 256
    )
    user: str = doc(
        "The user part of the agent's SIP address (`sip:<user>@<host>:<port>`).", "agent"
    )
    ring_ms: int = doc("How long an inbound call rings (180 Ringing) before it is answered.", 0)
    rtp_timeout_s: float = doc(
        "A call whose peer sends no RTP for this long is hung up (BYE).", 30.0
    )
    ring_timeout_s: float = doc(
        "An outbound call not answered within this is cancelled (`no-answer`).", 30.0
    )
    jitter_packets: int = doc(
        "RTP packets held waiting for a missing one before its gap is concealed (each 20 ms).", 3
    )
    echo_cancellation: bool = doc(
        "Take the agent's own voice out of the caller's audio before the VAD hears it (WebRTC's"
        " echo canceller, the agent's outgoing RTP audio as the reference), so a caller on a"
        " speakerphone does not cut the agent off with its echo.",
        True,
    )
    echo_gate_db: float = doc(
        "With `echo_cancellation`: 10 ms of the caller no more than this many dB louder than"
        " the agent's echo could be (its delay and gain as found on the line) is muted, so the"
        " echo the canceller leaves when the echo path jumps does not hold the agent; a caller"
        " speaking over the echo is louder and passes (but its first, quieter syllables may"
        " not: barge-in over echo took p95 955 ms with 6 dB, 158 ms without). 0 = off.",
        0.0,
    )
    max_dialogs: int = doc("Calls (ringing or answered) at once; more get 486 Busy Here.", 64)
    registrar: str = doc(
        "A registrar to REGISTER with (`sip:pbx.example.com`), refreshed before it expires, so"
        " calls to a PBX extension or a trunk number come here; empty = no registration.",
        "",
    )
    aor: str = doc(
        "The address of record to register (`sip:1001@pbx.example.com`); empty ="
        " `sip:<sip.user>@<the registrar's host>`.",
        "",
    )
    username: str = doc("The digest user name for the registrar (empty: `sip.user`).", "")
    password: str = doc("The digest password for the registrar.", "")
    register_expires_s: int = doc("The registration lifetime asked for, in seconds.", 3600)
    auth_users: str = doc(
        "Digest credentials an inbound call must present, `user:password` comma-separated"
        " (401 challenge, 403 when wrong); empty = calls are not authenticated.",
        "",
    )
    auth_realm: str = doc("The digest realm of `sip.auth_users`.", "voice")


_UPSTREAM = UpstreamSettings("")


@dataclass(slots=True)
class HandoffConfig:
    engine: str = doc(
        "Who replies by default: `cascade` (the local models), `openai-realtime` or"
        " `gemini-live` (a remote realtime model: its url and key below). A client may choose"
        " per session (`session.update` `engine`, or a `model` equal to an upstream's model).",
        "cascade",
    )
    fallback: bool = doc(
        "When a remote engine fails, go on with the cascade (which answers the turn left"
        " unanswered); off = say `notice` and end the session.",
        True,
    )
    notice: str = doc(
        "Said by the local voice when a remote engine fails and `fallback` is off.",
        HandoffSettings().notice,
    )
    openai_url: str = doc("OpenAI Realtime WebSocket URL; empty = the engine is not offered.", "")
    openai_key: str = doc("OpenAI API key (sent upstream only, never to a client).", "")
    openai_model: str = doc("OpenAI Realtime model (`?model=` on the URL).", "gpt-realtime")
    openai_voice: str = doc("OpenAI voice name; empty = the upstream's default.", "")
    openai_turn_detection: str = doc(
        "`upstream` (OpenAI's VAD ends turns; the caller's audio is relayed as it comes) or"
        " `server` (this server's turn-taking ends them and commits each turn).",
        _UPSTREAM.turn_detection,
    )
    openai_transcription_model: str = doc(
        "Input transcription model asked of OpenAI (e.g. `gpt-4o-transcribe`); empty = none"
        " asked for.",
        "",
    )
    openai_g711: bool = doc(
        "A phone call's G.711 (Twilio, SIP; a client's `audio/pcmu`/`audio/pcma`) is relayed to"
        " OpenAI as is, neither decoded nor resampled, and asked for back the same (the upstream"
        " hears the line itself: `twilio.echo_cancellation` applies to this server's own"
        " listening only); off = as 24 kHz PCM.",
        _UPSTREAM.g711_passthrough,
    )
    gemini_url: str = doc(
        "Gemini Live WebSocket URL (`wss://generativelanguage.googleapis.com/ws/google.ai."
        "generativelanguage.v1beta.GenerativeService.BidiGenerateContent`); empty = the engine"
        " is not offered.",
        "",
    )
    gemini_key: str = doc("Gemini API key (sent upstream only, never to a client).", "")
    gemini_model: str = doc("Gemini Live model.", "gemini-live-2.5-flash-preview")
    gemini_voice: str = doc("Gemini voice name (e.g. `Puck`); empty = the upstream's default.", "")
    gemini_turn_detection: str = doc(
        "`upstream` (Gemini's activity detection) or `server` (this server's turn-taking,"
        " sent as `activityStart`/`activityEnd`).",
        _UPSTREAM.turn_detection,
    )
    dtmf: str = doc(
        "Keypad keys that switch a phone call's engine, e.g. `*=openai-realtime,0=cascade`;"
        " empty = none.",
        "",
    )
    connect_timeout_s: float = doc(
        "Seconds to connect to an upstream and get its session.", _UPSTREAM.connect_timeout_s
    )
    first_audio_timeout_s: float = doc(
        "Seconds from asking an upstream for a reply to its first event.",
        _UPSTREAM.first_audio_timeout_s,
    )
    gap_timeout_s: float = doc(
        "Seconds an upstream may be silent in the middle of a reply.", _UPSTREAM.gap_timeout_s
    )
    max_message_bytes: int = doc(
        "Largest upstream message; a larger one ends the connection.",
        _UPSTREAM.max_message_bytes,
    )
    max_queued_events: int = doc(
        "Upstream events (or messages to it) waiting, at most; past it the engine fails.",
        _UPSTREAM.max_queued_events,
    )

    def settings(self) -> HandoffSettings:
        """The remote engines configured (those with a URL), for ``pipeline.handoff``."""
        common = {
            "connect_timeout_s": self.connect_timeout_s,
            "first_audio_timeout_s": self.first_audio_timeout_s,
            "gap_timeout_s": self.gap_timeout_s,
            "max_message_bytes": self.max_message_bytes,
            "max_queued_events": self.max_queued_events,
        }
        upstreams = {}
        if self.openai_url:
            upstreams[OPENAI_REALTIME] = UpstreamSettings(
                self.openai_url,
                key=self.openai_key,
                model=self.openai_model,
                voice=self.openai_voice,
                turn_detection=self.openai_turn_detection,
                transcription_model=self.openai_transcription_model,
                g711_passthrough=self.openai_g711,
                **common,  # type: ignore[arg-type]
            )
        if self.gemini_url:
            upstreams[GEMINI_LIVE] = UpstreamSettings(
                self.gemini_url,
                key=self.gemini_key,
                model=self.gemini_model,
                voice=self.gemini_voice,
                turn_detection=self.gemini_turn_detection,
                **common,  # type: ignore[arg-type]
            )
        return HandoffSettings(upstreams, fallback=self.fallback, notice=self.notice)

    def dtmf_keys(self) -> dict[str, str]:
        """``dtmf`` as ``{key: engine}``; raises :class:`ConfigError`."""
        try:
            return parse_dtmf(_pairs(self.dtmf, "handoff.dtmf"), "handoff.dtmf")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def check(self) -> None:
        """Raise :class:`ConfigError` for an engine or turn detection that cannot be."""
        if self.engine not in ENGINES:
            raise ConfigError(f"handoff.engine {self.engine!r}: use {', '.join(ENGINES)}")
        if self.engine != "cascade" and self.engine not in self.settings().upstreams:
            raise ConfigError(f"handoff.engine {self.engine!r} has no URL configured")
        self.dtmf_keys()
        for name, value in (
            ("openai_turn_detection", self.openai_turn_detection),
            ("gemini_turn_detection", self.gemini_turn_detection),
        ):
            if value not in TURN_DETECTION:
                raise ConfigError(f"handoff.{name} {value!r}: use {' or '.join(TURN_DETECTION)}")


@dataclass(slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    webrtc: WebRtcConfig = field(default_factory=WebRtcConfig)
    twilio: TwilioConfig = field(default_factory=TwilioConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    handoff: HandoffConfig = field(default_factory=HandoffConfig)


def sections() -> list[tuple[str, type]]:
    hints = get_type_hints(Config)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(Config)]


def load(
    path: str | Path | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, str] | None = None,
) -> Config:
    """Defaults ← TOML file ← ``VOICE_SECTION_KEY`` env vars ← ``overrides`` ("section.key")."""
    config = Config()
    env = dict(os.environ) if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    unknown = set(data) - {name for name, _ in sections()}
    if unknown:
        raise ConfigError(f"unknown config section [{sorted(unknown)[0]}]")
    overrides = dict(overrides or {})
    for key in overrides:
        if "." not in key:
            raise ConfigError(f"override {key!r} must look like section.key")
    for name, cls in sections():
        section = getattr(config, name)
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config section [{name}] must be a table, not {table!r:.40}")
        hints = get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(section)}
        for key in table:
            if key not in known:
                raise ConfigError(f"unknown config key {name}.{key}")
        for key in sorted(known):
            kind = hints[key]
            if key in table:
                setattr(section, key, _coerce(table[key], kind, f"{name}.{key}"))
            env_key = f"VOICE_{name}_{key}".upper()
            if env_key in env:
                setattr(section, key, _coerce(env[env_key], kind, env_key))
            if f"{name}.{key}" in overrides:
                setattr(
                    section, key, _coerce(overrides.pop(f"{name}.{key}"), kind, f"{name}.{key}")
                )
    if overrides:
        raise ConfigError(f"unknown config key {sorted(overrides)[0]}")
    if not config.llm.api_key:
        config.llm.api_key = env.get("OPENAI_API_KEY", "")
    return config


def _pairs(text: str, where: str) -> dict[str, str]:
    """``a=x,b=y`` → ``{"a": "x", "b": "y"}``."""
    pairs: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, sep, value = (part.strip() for part in entry.partition("="))
        if not sep or not name or not value:
            raise ConfigError(f"{where}: expected name=value, got {entry!r}")
        pairs[name] = value
    return pairs


def _coerce(value: Any, kind: Any, where: str) -> Any:
    if get_origin(kind) in (Union, types.UnionType):
        kind = next(a for a in get_args(kind) if a is not type(None))
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError(value)  # true is no number; 1.5 is no int
        if kind is str and not isinstance(value, str):
            raise TypeError(value)  # a TOML number, list or table where text is expected
        result = kind(value)
        if kind is float and not math.isfinite(result):
            raise ValueError(value)  # nan, inf: no setting means either
        return result
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None


SECRETS = frozenset(
    {
        ("server", "api_keys"),
        ("llm", "api_key"),
        ("twilio", "auth_token"),
        ("calls", "webhook_secret"),
        ("sip", "password"),
        ("sip", "auth_users"),
        ("handoff", "openai_key"),
        ("handoff", "gemini_key"),
    }
)
"""The ``(section, key)`` pairs whose values are credentials: ``voice config`` masks them."""


def shown(section: str, key: str, value: Any) -> str:
    """``value`` as ``voice config`` prints it: a set secret as ``'***'``, the rest as ``repr``."""
    if (section, key) in SECRETS and value:
        return "'***'"
    return repr(value)


def markdown() -> str:
    """The README's configuration table."""
    lines = ["| key | env | default | meaning |", "| --- | --- | --- | --- |"]
    for name, cls in sections():
        for f in dataclasses.fields(cls):
            default = f.default
            shown = f"`{default}`" if default != "" else "(empty)"
            if isinstance(default, str) and len(default) > 40:
                shown = "(see `voice config`)"
            env = f"VOICE_{name.upper()}_{f.name.upper()}"
            lines.append(f"| `{name}.{f.name}` | `{env}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(lines)
