"""One session's long audio must not hold up the others: the fair job queue of the recognizer,
the cutting of long audio into pieces, and the real Whisper engine serving two sessions."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from pipeline.engines import Engines
from pipeline.engines._fair import FairQueue, FairThreads
from pipeline.engines.asr_whisper import WhisperAsr, split_at_pauses
from pipeline.errors import EngineError

from .conftest import espeak
from .fakes import silence, tone

RATE = 16_000


# ------------------------------------------------------------------ the queue (no threads)


def test_a_newcomer_goes_before_a_backlog() -> None:
    queue: FairQueue[str] = FairQueue(max_pending=8)
    queue.push("A", "A1")
    assert queue.pop() == "A1"  # running
    for n in range(2, 6):
        queue.push("A", f"A{n}")
    queue.push("B", "B1")
    queue.push("C", "C1")
    order = [queue.pop() for _ in range(6)]
    assert order == ["B1", "C1", "A2", "A3", "A4", "A5"]
    assert queue.pop() is None


def test_two_backlogs_alternate_and_each_owner_keeps_its_order() -> None:
    queue: FairQueue[str] = FairQueue(max_pending=8)
    for n in range(1, 4):
        queue.push("A", f"A{n}")
    for n in range(1, 4):
        queue.push("B", f"B{n}")
    assert [queue.pop() for _ in range(6)] == ["A1", "B1", "A2", "B2", "A3", "B3"]


def test_an_owner_coming_back_at_once_does_not_jump_the_queue() -> None:
    """An owner that submits its next job as soon as one starts gets its share, not every
    other slot (a plain "newcomers first" rotation would run B2 right after B1)."""
    queue: FairQueue[str] = FairQueue(max_pending=8)
    for n in range(1, 4):
        queue.push("A", f"A{n}")
        queue.push("C", f"C{n}")
    order = [queue.pop()]
    queue.push("B", "B1")
    order += [queue.pop(), queue.pop()]
    queue.push("B", "B2")
    order += [queue.pop() for _ in range(3)]
    assert order == ["A1", "C1", "B1", "A2", "C2", "B2"]


def test_each_owner_has_a_bounded_number_of_waiting_jobs() -> None:
    queue: FairQueue[str] = FairQueue(max_pending=2)
    queue.push("A", "A1")
    queue.push("A", "A2")
    with pytest.raises(EngineError, match="2 jobs of this session are waiting") as full:
        queue.push("A", "A3")
    assert full.value.retryable
    queue.push("B", "B1")  # another owner is not affected
    assert queue.pop() == "A1"
    queue.push("A", "A3")  # room again once one started
    assert len(queue) == 3


def test_a_removed_job_is_never_popped() -> None:
    queue: FairQueue[str] = FairQueue(max_pending=8)
    queue.push("A", "A1")
    queue.push("A", "A2")
    assert queue.remove("A", "A1")
    assert not queue.remove("A", "A1")
    assert [queue.pop(), queue.pop()] == ["A2", None]


# ------------------------------------------------------------------ the threads


class Gate:
    """Jobs that record the order they ran in; the first one waits until ``open``."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.started = threading.Event()
        self.released = threading.Event()

    def blocking(self, name: str) -> Callable[[], str]:
        def job() -> str:
            self.order.append(name)
            self.started.set()
            assert self.released.wait(10), "the test never opened the gate"
            return name

        return job

    def quick(self, name: str) -> Callable[[], str]:
        def job() -> str:
            self.order.append(name)
            return name

        return job

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 10)


async def test_a_later_owner_runs_second_not_sixth() -> None:
    threads = FairThreads("test", 1, max_pending=8)
    gate = Gate()
    try:
        first = threads.submit("A", gate.blocking("A1"))
        await gate.wait_started()
        backlog = [threads.submit("A", gate.quick(f"A{n}")) for n in range(2, 6)]
        other = threads.submit("B", gate.quick("B1"))
        gate.released.set()
        results = await asyncio.gather(first, *backlog, other)
    finally:
        gate.released.set()
        threads.shutdown()
    assert results == ["A1", "A2", "A3", "A4", "A5", "B1"]
    assert gate.order == ["A1", "B1", "A2", "A3", "A4", "A5"]


async def test_cancelling_a_waiting_job_removes_it() -> None:
    threads = FairThreads("test", 1, max_pending=8)
    gate = Gate()
    try:
        first = threads.submit("A", gate.blocking("A1"))
        await gate.wait_started()
        waiting = asyncio.create_task(threads.run("A", gate.quick("A2")))
        await asyncio.sleep(0)  # let it queue its job
        assert threads.pending("A") == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert threads.pending("A") == 0
        later = threads.submit("A", gate.quick("A3"))
        gate.released.set()
        assert [await first, await later] == ["A1", "A3"]
    finally:
        gate.released.set()
        threads.shutdown()
    assert gate.order == ["A1", "A3"]


async def test_too_many_waiting_jobs_fail_clearly_and_errors_reach_the_caller() -> None:
    threads = FairThreads("asr", 1, max_pending=2)
    gate = Gate()

    def broken() -> str:
        raise EngineError("model crashed", engine="asr")

    try:
        first = threads.submit("A", gate.blocking("A1"))
        await gate.wait_started()
        queued = [threads.submit("A", gate.quick("A2")), threads.submit("A", broken)]
        with pytest.raises(EngineError, match="asr queue is full"):
            threads.submit("A", gate.quick("A4"))
        other = threads.submit("B", gate.quick("B1"))
        gate.released.set()
        assert await first == "A1" and await queued[0] == "A2" and await other == "B1"
        with pytest.raises(EngineError, match="model crashed"):
            await queued[1]
    finally:
        gate.released.set()
        threads.shutdown()


async def test_shutdown_fails_the_waiting_jobs() -> None:
    threads = FairThreads("test", 1, max_pending=8)
    gate = Gate()
    first = threads.submit("A", gate.blocking("A1"))
    await gate.wait_started()
    waiting = threads.submit("B", gate.quick("B1"))
    threads.shutdown()
    gate.released.set()
    assert await first == "A1"
    with pytest.raises(EngineError, match="shut down"):
        await waiting
    with pytest.raises(EngineError, match="shut down"):
        threads.submit("A", gate.quick("A2"))


async def test_shutdown_waits_a_bounded_time_for_the_job_in_progress(
    caplog: pytest.LogCaptureFixture,
) -> None:
    threads = FairThreads("test", 1, max_pending=8)
    gate = Gate()
    first = threads.submit("A", gate.blocking("A1"))
    await gate.wait_started()
    threads.shutdown(wait_s=0.05)  # the job is still running: shutdown returns, and says so
    assert "test: workers still busy" in caplog.text
    gate.released.set()
    threads.shutdown(wait_s=60)
    assert not any(thread.is_alive() for thread in threads._threads)
    assert await first == "A1"


# ------------------------------------------------------------------ cutting long audio


def test_long_audio_is_cut_at_its_pauses_into_pieces_of_at_most_30_s() -> None:
    # 70 s of "speech" (a loud tone) with a 0.3 s pause at 27.2 s and a quieter stretch at 53 s
    audio = tone(70.0)
    audio[int(27.2 * RATE) : int(27.5 * RATE)] = 0
    audio[int(53.0 * RATE) : int(53.2 * RATE)] //= 20
    pieces = split_at_pauses(audio)
    assert len(pieces) == 3
    assert all(len(p) <= 30 * RATE for p in pieces)
    assert np.array_equal(np.concatenate(pieces), audio)  # nothing lost, nothing repeated
    cuts = np.cumsum([len(p) for p in pieces])[:-1] / RATE
    assert 27.2 <= cuts[0] <= 27.5
    assert 53.0 <= cuts[1] <= 53.2


def test_short_audio_stays_whole_and_silence_is_cut_as_late_as_allowed() -> None:
    assert len(split_at_pauses(tone(30.0))) == 1
    pieces = split_at_pauses(silence(45.0))
    assert [round(len(p) / RATE, 2) for p in pieces] == [29.99, 15.01]


# ------------------------------------------------------------------ the real model


LONG_SENTENCES = [
    "The lighthouse keeper climbed the stairs every evening to light the lamp.",
    "Ships passing in the night relied on the beam to avoid the rocks.",
    "In winter the storms were fierce and the waves reached the windows.",
    "He kept a journal of every vessel that sailed past the island.",
]


@pytest.mark.models
async def test_a_short_turn_is_not_stuck_behind_a_long_item(engines: Engines) -> None:
    asr = engines.asr
    assert isinstance(asr, WhisperAsr) and asr.options.workers == 1
    parts: list[np.ndarray] = []
    while sum(len(p) for p in parts) < 58 * RATE:
        for sentence in LONG_SENTENCES:
            parts += [espeak(sentence), silence(0.4)]
    long = np.concatenate(parts)[: 60 * RATE]
    short = espeak("What time is it?")
    assert len(long) / RATE > 55 and len(short) / RATE < 3

    finished: list[str] = []

    async def transcribe(audio: np.ndarray, owner: str) -> str:
        text = await asr.transcribe(audio, owner=owner)
        finished.append(owner)
        return text

    upload = asyncio.create_task(transcribe(long, "sess_upload"))
    await asyncio.sleep(0)  # the upload queues all its pieces first
    assert asr._threads.pending("sess_upload") >= 1
    question = await transcribe(short, "sess_caller")
    long_text = await upload
    assert finished == ["sess_caller", "sess_upload"]
    assert "time" in question.lower()
    assert "light" in long_text.lower() and len(long_text.split()) > 20  # both pieces' words
