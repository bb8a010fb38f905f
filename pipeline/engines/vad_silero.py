"""Silero VAD through onnxruntime (the ONNX model shipped in the ``silero-vad`` package).

The model is shared; each session gets a :class:`SileroStream` holding its recurrent state and
the 64-sample context the model expects in front of every 512-sample window (16 kHz, 32 ms).

One thread runs the model (:class:`_Batcher`). When it is free it takes every session's windows
waiting at that moment, one request per session, and scores them together: the k-th window of
each in one run of a batch (the model's rows are independent: the same probabilities as one by
one). It never waits to gather more, so a caller alone gets each window scored at once; under
load, when the windows of several callers have piled up behind a busy core, a run of 8 costs
about what 3 single ones do (0.53 ms against 0.16 for one, on the 2-core EPYC used here) and
they cross threads once, not 8 times.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from ..errors import ConfigError, EngineError

log = logging.getLogger("voice.vad")
WINDOW = 512
CONTEXT = 64
RATE = 16_000
MAX_BATCH = 16
"""Sessions scored in one run."""
MAX_WAITING = 256
"""Requests waiting for the thread (a session has one at a time: this bounds a runaway)."""
CLOSE_WAIT_S = 10.0


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
        session = onnxruntime.InferenceSession(
            str(path), sess_options=so, providers=["CPUExecutionProvider"]
        )
        self._batcher = _Batcher(session)

    def stream(self) -> SileroStream:
        return SileroStream(self._batcher)

    def run_windows(
        self, windows: np.ndarray, state: np.ndarray, context: np.ndarray
    ) -> tuple[list[float], np.ndarray, np.ndarray]:
        """Blocking, on the calling thread (a test on virtual time scores inline): ``windows``
        in order from ``state``/``context``; returns their probabilities and the new ones."""
        stream = SileroStream(self._batcher)
        stream.state, stream.context = state, context
        request = _Request(stream, windows)
        self._batcher.score([request])
        return request.probs, stream.state, stream.context

    @property
    def runs(self) -> tuple[int, int]:
        """Model runs so far and the windows they scored (a run: one window of each session in
        it)."""
        return self._batcher.runs, self._batcher.windows

    def close(self) -> None:
        """Stop the thread after the run in progress; waiting requests fail."""
        self._batcher.close()
        runs, windows = self.runs
        if runs:
            log.info("VAD: %d windows in %d runs (%.2f a run)", windows, runs, windows / runs)


class SileroStream:
    window = WINDOW

    def __init__(self, batcher: _Batcher) -> None:
        self._batcher = batcher
        # Only the batcher's thread reads and writes these once the stream has been submitted.
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)

    async def probabilities(self, windows: np.ndarray) -> list[float]:
        """Speech probability of each ``(n, 512)`` int16 window, in order. Cancel-safe: the
        windows are scored (the state moves on) whether or not the result is awaited."""
        if windows.ndim != 2 or windows.shape[1] != WINDOW:  # (checked here: a run is shared)
            raise EngineError(
                f"VAD windows must be (n, {WINDOW}), not {windows.shape}", engine="vad"
            )
        if not len(windows):
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[float]] = loop.create_future()
        self._batcher.submit(_Request(self, windows, loop, future))
        return await future


@dataclass(slots=True, eq=False)
class _Request:
    stream: SileroStream
    windows: np.ndarray
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[list[float]] | None = None
    probs: list[float] = field(default_factory=list)


class _Batcher:
    def __init__(self, session: Any) -> None:
        self._session = session
        self._sr = np.array(RATE, dtype=np.int64)
        self._waiting: deque[_Request] = deque()
        self._lock = threading.Condition()
        self._closed = False
        self.runs = 0
        self.windows = 0
        self._thread = threading.Thread(target=self._work, name="vad", daemon=True)
        self._thread.start()

    def submit(self, request: _Request) -> None:
        with self._lock:
            if self._closed:
                raise EngineError("the VAD is shut down", engine="vad")
            if len(self._waiting) >= MAX_WAITING:
                raise EngineError("the VAD is overloaded", engine="vad", retryable=True)
            self._waiting.append(request)
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=CLOSE_WAIT_S)

    def _work(self) -> None:
        while (batch := self._next()) is not None:
            error: EngineError | None = None
            try:
                self.score(batch)
            except EngineError as exc:
                error = exc
            _deliver(batch, error)
        with self._lock:
            left, self._waiting = list(self._waiting), deque()
        _deliver(left, EngineError("the VAD is shut down", engine="vad"))

    def _next(self) -> list[_Request] | None:
        """Every request waiting, at most one per stream (a stream's next waits for this run's
        state) and ``MAX_BATCH``; None once closed."""
        with self._lock:
            while not self._waiting and not self._closed:
                self._lock.wait()
            if self._closed:
                return None
            batch: list[_Request] = []
            later: deque[_Request] = deque()
            streams: set[int] = set()
            while self._waiting and len(batch) < MAX_BATCH:
                request = self._waiting.popleft()
                if id(request.stream) in streams:
                    later.append(request)
                else:
                    streams.add(id(request.stream))
                    batch.append(request)
            later.extend(self._waiting)
            self._waiting = later
            return batch

    def score(self, batch: list[_Request]) -> None:
        """Blocking: every request's windows, one window of each per run."""
        try:
            self._score(batch)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
            raise EngineError(f"VAD inference failed: {exc}", engine="vad") from exc

    def _score(self, batch: list[_Request]) -> None:
        for k in range(max(len(r.windows) for r in batch)):
            rows = [r for r in batch if len(r.windows) > k]
            x = np.empty((len(rows), CONTEXT + WINDOW), dtype=np.float32)
            for i, r in enumerate(rows):
                x[i, :CONTEXT] = r.stream.context
                np.multiply(r.windows[k], 1 / 32768.0, out=x[i, CONTEXT:], casting="unsafe")
            state = np.concatenate([r.stream.state for r in rows], axis=1)
            out, state = self._session.run(None, {"input": x, "state": state, "sr": self._sr})
            self.runs += 1
            self.windows += len(rows)
            for i, r in enumerate(rows):
                r.stream.state = state[:, i : i + 1]
                r.stream.context = x[i, -CONTEXT:]
                r.probs.append(float(out[i][0]))


def _deliver(requests: list[_Request], error: EngineError | None) -> None:
    """Hand the results to each request's loop, one callback per loop."""
    by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list[_Request]]] = {}
    for r in requests:
        if r.loop is not None:
            by_loop.setdefault(id(r.loop), (r.loop, []))[1].append(r)
    for loop, group in by_loop.values():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody awaits these
            loop.call_soon_threadsafe(_resolve, group, error)


def _resolve(requests: list[_Request], error: EngineError | None) -> None:
    for r in requests:
        if r.future is None or r.future.done():  # (cancelled)
            continue
        if error is not None:
            r.future.set_exception(error)
        else:
            r.future.set_result(r.probs)
