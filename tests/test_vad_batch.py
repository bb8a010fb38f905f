"""The VAD's one thread scores the windows of several sessions in one run of the model: each
session's probabilities must be what it would get alone, in order, whatever was batched with
it; a cancelled await must not cost a session its state; closing fails what still waits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.engines.vad_silero import WINDOW, SileroOptions, SileroStream, SileroVad
from pipeline.errors import EngineError
from tests.conftest import espeak


@pytest.fixture(scope="module")
def audio() -> list[np.ndarray]:
    """Three callers: speech, noise with a burst of speech, a hum: different probabilities."""
    speech = espeak("Could you book a table for two at eight tonight?")
    rng = np.random.default_rng(3)
    noisy = (rng.standard_normal(len(speech)) * 300).astype(np.int16)
    noisy[len(noisy) // 3 : len(noisy) // 3 + len(speech) // 2] += speech[: len(speech) // 2]
    hum = (np.sin(np.arange(len(speech)) * 2 * np.pi * 120 / 16_000) * 4000).astype(np.int16)
    n = len(speech) // WINDOW * WINDOW
    return [a[:n].reshape(-1, WINDOW) for a in (speech, noisy, hum)]


@pytest.fixture
def vad() -> Iterator[SileroVad]:
    model = SileroVad(SileroOptions())
    yield model
    model.close()


def _chunks(windows: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """``windows`` cut into requests of ``sizes`` windows, cycling."""
    out, k, i = [], 0, 0
    while k < len(windows):
        out.append(windows[k : k + sizes[i % len(sizes)]])
        k += sizes[i % len(sizes)]
        i += 1
    return out


async def _alone(vad: SileroVad, windows: np.ndarray) -> list[float]:
    stream = vad.stream()
    return [p for w in windows for p in await stream.probabilities(w[None, :])]


async def test_sessions_scored_together_get_what_each_gets_alone(
    vad: SileroVad, audio: list[np.ndarray]
) -> None:
    alone = [await _alone(vad, windows) for windows in audio]
    assert max(alone[0]) > 0.5 and max(alone[2]) < 0.5  # (the audio tells them apart)
    streams = [vad.stream() for _ in audio]
    requests = [_chunks(w, sizes) for w, sizes in zip(audio, ([1], [2, 1], [3]), strict=True)]
    together: list[list[float]] = [[] for _ in audio]
    runs_before, windows_before = vad.runs
    for step in range(max(len(r) for r in requests)):
        todo = [(i, r[step]) for i, r in enumerate(requests) if step < len(r)]
        # Held, the thread finds every request of this step waiting when it next looks.
        with vad._batcher._lock:
            tasks = [asyncio.ensure_future(streams[i].probabilities(w)) for i, w in todo]
            await asyncio.sleep(0)  # (each task submits its request)
        for (i, _), probs in zip(
            todo, await asyncio.wait_for(asyncio.gather(*tasks), 30), strict=True
        ):
            together[i].extend(probs)
    for got, expected in zip(together, alone, strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    runs, windows = vad.runs
    assert windows - windows_before == sum(len(w) for w in audio)
    # each step's requests went in one batch: one run per window of the longest request
    assert runs - runs_before == sum(max(len(r[s]) for r in requests if s < len(r))
                                     for s in range(max(len(r) for r in requests)))  # fmt: skip


async def test_a_sessions_next_request_waits_for_its_state(
    vad: SileroVad, audio: list[np.ndarray]
) -> None:
    alone = await _alone(vad, audio[0])
    stream = vad.stream()
    halves = np.array_split(audio[0], 2)
    with vad._batcher._lock:  # both waiting at once: never in the same run
        tasks = [asyncio.ensure_future(stream.probabilities(h)) for h in halves]
        await asyncio.sleep(0)
    first, second = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    np.testing.assert_allclose(first + second, alone, atol=1e-6)


async def test_a_cancelled_await_still_moves_the_state_on(
    vad: SileroVad, audio: list[np.ndarray]
) -> None:
    alone = await _alone(vad, audio[1])
    stream: SileroStream = vad.stream()
    head, tail = audio[1][:10], audio[1][10:]
    task = asyncio.ensure_future(stream.probabilities(head))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the cancelled windows were scored all the same: the rest goes on from there
    rest = await asyncio.wait_for(stream.probabilities(tail), 30)
    np.testing.assert_allclose(rest, alone[10:], atol=1e-6)


async def test_closing_fails_what_waits_and_refuses_more(audio: list[np.ndarray]) -> None:
    vad = SileroVad(SileroOptions())
    stream = vad.stream()
    with vad._batcher._lock:
        task = asyncio.ensure_future(stream.probabilities(audio[0]))
        await asyncio.sleep(0)
        vad._batcher._closed = True  # (what close() sets, before the thread looks again)
        vad._batcher._lock.notify()
    vad.close()
    with pytest.raises(EngineError, match="shut down"):
        await asyncio.wait_for(task, 10)
    with pytest.raises(EngineError, match="shut down"):
        await stream.probabilities(audio[0][:1])


async def test_a_malformed_request_fails_alone(vad: SileroVad, audio: list[np.ndarray]) -> None:
    stream = vad.stream()
    with pytest.raises(EngineError, match="windows must be"):
        await stream.probabilities(audio[0].reshape(-1, WINDOW // 2))
    assert await stream.probabilities(audio[0][:0]) == []
    # the stream goes on as if nothing had been asked
    expected = await _alone(vad, audio[0][:5])
    got = await asyncio.wait_for(stream.probabilities(audio[0][:5]), 30)
    np.testing.assert_allclose(got, expected, atol=1e-6)
