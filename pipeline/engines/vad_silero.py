"""Silero VAD through onnxruntime (the ONNX model shipped in the ``silero-vad`` package).

The model is shared; each session gets a :class:`SileroStream` holding its recurrent state and
the 64-sample context the model expects in front of every 512-sample window (16 kHz, 32 ms).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime

from ..errors import ConfigError, EngineError
from ._threads import EngineThreads

WINDOW = 512
CONTEXT = 64
RATE = 16_000


def bundled_model_path() -> Path:
    """``silero_vad/data/silero_vad.onnx`` from the installed package, without importing it
    (its ``__init__`` imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the silero-vad package is not installed and no VAD model path is set")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


@dataclass(slots=True)
class SileroOptions:
    model_path: Path | None = None
    threads: int = 1


class SileroVad:
    def __init__(self, options: SileroOptions) -> None:
        path = options.model_path or bundled_model_path()
        if not path.is_file():
            raise ConfigError(f"VAD model not found: {path}")
        so = onnxruntime.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
        self.path = path
        self._session = onnxruntime.InferenceSession(
            str(path), sess_options=so, providers=["CPUExecutionProvider"]
        )
        self._threads = EngineThreads("vad", 1)

    def stream(self) -> SileroStream:
        return SileroStream(self)

    def close(self) -> None:
        """Stop the worker after the windows in progress (waiting ones are dropped)."""
        self._threads.shutdown()

    def run_windows(
        self, windows: np.ndarray, state: np.ndarray, context: np.ndarray
    ) -> tuple[list[float], np.ndarray, np.ndarray]:
        """Blocking: score windows in order from ``state``/``context``; returns the new ones."""
        sr = np.array(RATE, dtype=np.int64)
        probs: list[float] = []
        try:
            for window in windows:
                x = np.concatenate([context, window.astype(np.float32) / 32768.0])[None, :]
                out, state = self._session.run(None, {"input": x, "state": state, "sr": sr})
                context = x[0, -CONTEXT:]
                probs.append(float(out[0][0]))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
            raise EngineError(f"VAD inference failed: {exc}", engine="vad") from exc
        return probs, state, context


class SileroStream:
    window = WINDOW

    def __init__(self, model: SileroVad) -> None:
        self._model = model
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    async def probabilities(self, windows: np.ndarray) -> list[float]:
        probs, state, context = await self._model._threads.run(
            self._model.run_windows, windows, self._state, self._context
        )
        self._state, self._context = state, context
        return probs
