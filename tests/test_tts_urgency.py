"""Speech synthesis shared by sessions serves the most urgent clause first: a caller's first
clause goes before the tail of another caller's reply, which only has to be ready before its
audio runs out. The queue (plain data), the dues a reply gives, several replies sharing one
synthesizer on virtual time, and the real Piper engine."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from pipeline.clock import VirtualClock
from pipeline.engines import GenerationOptions
from pipeline.engines._urgent import UrgentQueue, UrgentThreads
from pipeline.engines.tts_piper import PiperOptions, PiperTts
from pipeline.errors import EngineError
from pipeline.metrics import Marks
from pipeline.reply import Reply, ReplySettings, Scripted, Speech
from voice import models

from .fakes import ScriptedLlm, ToneTts, tone

RATE = 24_000
SETTINGS = ReplySettings(trim_leading_silence=False)

# ------------------------------------------------------------------ the queue (no threads)


def test_a_first_clause_goes_before_tails_that_are_not_yet_needed() -> None:
    """At 2.0 s the worker frees up. Waiting: A's third clause (its audio runs out at 3.1 s,
    less the margin: due 2.6), C's second (due 2.2), and B's first, queued last (B's reply
    began at 1.4). B's goes first, then the tails by how soon they run dry."""
    queue: UrgentQueue[str] = UrgentQueue(max_pending=8)
    queue.push(2.6, "A3")
    queue.push(2.2, "C2")
    queue.push(1.4, "B1")
    assert [queue.pop() for _ in range(3)] == ["B1", "C2", "A3"]
    assert queue.pop() is None


def test_a_tail_about_to_run_dry_goes_before_a_newer_first_clause() -> None:
    queue: UrgentQueue[str] = UrgentQueue(max_pending=8)
    queue.push(5.0, "B1")  # B's reply began at 5.0
    queue.push(4.9, "A4")  # A's audio runs out at 5.4: needed before B's began
    assert [queue.pop(), queue.pop()] == ["A4", "B1"]


def test_equal_dues_keep_arrival_order_and_none_is_first() -> None:
    queue: UrgentQueue[str] = UrgentQueue(max_pending=8)
    for job in ("x", "y", "z"):
        queue.push(1.0, job)
    queue.push(None, "now")
    assert [queue.pop() for _ in range(4)] == ["now", "x", "y", "z"]


def test_a_withdrawn_job_is_not_served_and_the_queue_is_bounded() -> None:
    queue: UrgentQueue[str] = UrgentQueue(max_pending=3, engine="tts")
    for due, job in ((3.0, "c"), (1.0, "a"), (2.0, "b")):
        queue.push(due, job)
    with pytest.raises(EngineError, match="tts queue is full: 3 jobs"):
        queue.push(0.0, "d")
    assert queue.remove("a") and not queue.remove("a")
    assert [queue.pop(), queue.pop(), queue.pop()] == ["b", "c", None]


# ------------------------------------------------------------------ the dues a reply gives


def _reply(llm: object, tts: object, clock: VirtualClock) -> Reply:
    return Reply(
        llm=llm,  # type: ignore[arg-type]
        tts=tts,  # type: ignore[arg-type]
        messages=[],
        generation=GenerationOptions(),
        settings=SETTINGS,
        clock=clock,
        output_rate=RATE,
        on_audio=lambda frame: None,
        on_text=lambda text: None,
        marks=Marks(),
    )


async def _run(clock: VirtualClock, *coroutines: object) -> None:
    tasks = [asyncio.ensure_future(c) for c in coroutines]  # type: ignore[call-overload]
    while not all(t.done() for t in tasks):
        await clock.advance(0.05)
    for task in tasks:
        task.result()


async def test_a_reply_asks_for_its_first_clause_at_once_and_the_rest_before_it_runs_out() -> None:
    clock = VirtualClock(start=100.0)
    tts = ToneTts(ms_per_word=200)
    text = (
        "Sure, here it is. The first stop is the old harbour by the sea, then we walk up "
        "the hill to the castle, and after lunch we take the train back to the city."
    )
    await _run(clock, _reply(Scripted(text), tts, clock).run())
    assert len(tts.texts) >= 3
    seconds = [len(t.split()) * 0.2 for t in tts.texts]
    assert tts.dues[0] == 100.0  # when the reply began: its caller is waiting
    for k in range(1, len(tts.texts)):  # audio played from 100.0 on, back to back
        expected = 100.0 + sum(seconds[:k]) - SETTINGS.tts_margin
        assert tts.dues[k] == pytest.approx(expected, abs=1e-6), (k, tts.texts[k])


async def test_a_reply_read_aloud_tells_the_llm_so_a_text_reply_does_not() -> None:
    """``spoken`` lets the batched LLM pace the tail (it only has to stay ahead of speech);
    a text reply's words go out as fast as they come."""
    clock = VirtualClock()
    llm = ScriptedLlm(["Fine, thanks."])
    spoken = _reply(llm, ToneTts(), clock)
    text = Reply(
        llm=llm,
        tts=ToneTts(),
        messages=[],
        generation=GenerationOptions(),
        settings=SETTINGS,
        clock=clock,
        output_rate=RATE,
        on_audio=lambda frame: None,
        on_text=lambda text: None,
        marks=Marks(),
        speech=Speech(audio=False),
    )
    await _run(clock, spoken.run(), text.run())
    assert sorted(o.spoken for o in llm.options) == [False, True]


# ------------------------------------------------------------------ replies sharing a synthesizer


@dataclass
class OneAtATime:
    """A synthesizer that makes one clause at a time, ``cost`` virtual seconds a word, taking
    the next from an :class:`UrgentQueue` (or in arrival order with ``fifo``)."""

    clock: VirtualClock
    cost: float
    fifo: bool = False
    sample_rate: int = RATE
    started: list[tuple[str, float]] = field(default_factory=list)
    """(text, when its synthesis started), in order."""
    _queue: UrgentQueue[tuple[str, asyncio.Future[np.ndarray]]] = field(
        default_factory=lambda: UrgentQueue(64)
    )
    _busy: bool = False

    async def synthesize(
        self, text: str, *, speed: float = 1.0, voice: str | None = None, due: float | None = None
    ) -> np.ndarray:
        done: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.push(None if self.fifo else due, (text, done))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._work())
        return await done

    def overdue(self) -> int:
        return self._queue.overdue(self.clock.now())

    async def _work(self) -> None:
        while (job := self._queue.pop()) is not None:
            text, done = job
            self.started.append((text, self.clock.now()))
            await self.clock.sleep_until(self.clock.now() + self.cost * len(text.split()))
            done.set_result(tone(len(text.split()) * 0.3, RATE))
        self._busy = False


TAIL = (
    "Of course. The museum opens at nine in the morning, the guided tour starts at ten, "
    "the cafe on the top floor serves lunch until two, and the garden stays open late."
)


async def _five_callers(fifo: bool) -> OneAtATime:
    """Four callers are in the middle of long replies when the fifth's reply begins at 1.0 s."""
    clock = VirtualClock()
    tts = OneAtATime(clock, cost=0.08, fifo=fifo)
    late = ScriptedLlm(["Yes, the station is right around the corner from here."])
    late.delay(clock, 1.0)
    others = [_reply(Scripted(TAIL.replace("museum", name)), tts, clock) for name in "ACDE"]
    await _run(clock, *(r.run() for r in others), _reply(late, tts, clock).run())
    return tts


def _wait_for_first(tts: OneAtATime) -> int:
    """How many other clauses were synthesized between the late reply beginning and its first."""
    begun = [n for n, (_, at) in enumerate(tts.started) if at >= 1.0]
    first_b = next(n for n, (text, _) in enumerate(tts.started) if text.startswith("Yes"))
    return first_b - begun[0]


async def test_a_new_callers_first_clause_waits_for_at_most_the_clause_being_made() -> None:
    urgent, fifo = await _five_callers(fifo=False), await _five_callers(fifo=True)
    assert _wait_for_first(urgent) == 0  # next, once the clause in progress is done
    assert _wait_for_first(fifo) >= 3  # in arrival order: behind the others' next clauses
    assert sorted(t for t, _ in urgent.started) == sorted(t for t, _ in fifo.started)


# ------------------------------------------------------------------ the worker threads


async def test_a_reserved_worker_takes_only_what_is_due_so_a_first_clause_never_waits() -> None:
    """Two workers, one reserved. A tail not yet needed occupies the other; a second such
    tail waits for it, while a first clause (already due) starts at once beside it."""
    now = 100.0
    pool = UrgentThreads("tts", 2, reserved=1, now=lambda: now)
    started: list[str] = []
    gate, busy = threading.Event(), threading.Event()

    def job(name: str, block: bool = False) -> str:
        started.append(name)
        if block:
            busy.set()
            gate.wait(timeout=60)
        return name

    try:
        tail1 = pool.submit(200.0, job, "tail1", True)
        assert await asyncio.to_thread(busy.wait, 30)  # (else the first clause may go first)
        tail2 = pool.submit(200.0, job, "tail2")
        first = pool.submit(100.0, job, "first")
        assert await asyncio.wait_for(first, timeout=30) == "first"
        assert set(started) == {"tail1", "first"}  # tail2 is not due: the reserve left it
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(tail1, tail2), 30) == ["tail1", "tail2"]
        assert started[-1] == "tail2"
    finally:
        gate.set()
        pool.shutdown()
    with pytest.raises(ValueError, match="reserved must leave a worker"):
        UrgentThreads("tts", 1, reserved=1)


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
async def test_work_ahead_of_its_time_runs_at_a_lower_priority_and_due_work_never_does() -> None:
    """An ``ahead`` worker starts only clauses not needed yet, ``ahead_nice`` levels lower; a
    clause already due waits for a worker at the server's priority even when that one is busy,
    while the ahead worker goes on with later work."""
    now = 100.0
    pool = UrgentThreads("tts", 1, reserved=1, ahead=1, ahead_nice=5, now=lambda: now)
    base = _nice()
    gate, busy = threading.Event(), threading.Event()

    def blocking() -> int:
        busy.set()
        gate.wait(timeout=60)
        return _nice()

    try:
        assert await asyncio.wait_for(pool.run(200.0, _nice), 30) == min(base + 5, 19)
        held = pool.submit(90.0, blocking)  # due: the reserved worker's
        assert await asyncio.to_thread(busy.wait, 30)
        due = pool.submit(100.0, _nice)  # due, the reserved worker busy: it waits
        assert await asyncio.wait_for(pool.run(300.0, _nice), 30) == min(base + 5, 19)
        assert not due.done()
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(held, due), 30) == [base, base]
    finally:
        gate.set()
        pool.shutdown()
    with pytest.raises(ValueError, match="ahead_nice"):
        UrgentThreads("tts", 1, reserved=1, ahead=1, ahead_nice=20)
    with pytest.raises(ValueError, match="reserved must leave a worker"):
        UrgentThreads("tts", 1, reserved=1)


async def test_a_worker_for_any_job_leaves_a_due_one_to_a_free_reserved_worker() -> None:
    now = 100.0
    pool = UrgentThreads("tts", 2, reserved=1, now=lambda: now)
    names: list[str] = []

    def who() -> str:
        names.append(threading.current_thread().name)
        return names[-1]

    try:
        assert await asyncio.wait_for(pool.run(200.0, who), 30) == "tts-0"  # not due: tts-0's
        deadline = time.monotonic() + 30
        while pool._free_reserved == 0:  # (until the reserved worker waits for work)
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        assert await asyncio.wait_for(pool.run(100.0, who), 30) == "tts-1"  # due: the reserve's
    finally:
        pool.shutdown()


def test_the_soonest_job_not_due_yet() -> None:
    queue: UrgentQueue[str] = UrgentQueue(8)
    for due, job in [(5.0, "e"), (1.0, "a"), (3.0, "c"), (None, "now"), (4.0, "d")]:
        queue.push(due, job)
    assert queue.pop_after(2.0) == "c" and queue.pop_after(4.5) == "e"
    assert queue.pop_after(9.0) is None
    assert [queue.pop() for _ in range(3)] == ["now", "a", "d"] and len(queue) == 0


async def test_the_pool_is_behind_while_a_due_job_waits_for_a_worker() -> None:
    """``overdue``: what the starved-reply cut asks before adding one more synthesis."""
    queue: UrgentQueue[str] = UrgentQueue(8)
    for due, job in [(5.0, "e"), (1.0, "a"), (None, "now")]:
        queue.push(due, job)
    assert [queue.overdue(t) for t in (0.0, 1.0, 9.0)] == [1, 2, 3]
    now = 100.0
    pool = UrgentThreads("tts", 1, now=lambda: now)
    gate, busy = threading.Event(), threading.Event()

    def job(name: str, block: bool = False) -> str:
        if block:
            busy.set()
            gate.wait(timeout=60)
        return name

    try:
        running = pool.submit(100.0, job, "running", True)
        assert await asyncio.to_thread(busy.wait, 30)
        assert pool.overdue() == 0  # started: not waiting
        later = pool.submit(200.0, job, "later")
        assert pool.overdue() == 0  # waits, but is not needed yet
        due = pool.submit(90.0, job, "due")
        assert pool.overdue() == 1
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(running, due, later), 30) == [
            "running",
            "due",
            "later",
        ]
        assert pool.overdue() == 0
    finally:
        gate.set()
        pool.shutdown()


# ------------------------------------------------------------------ the real engine


@pytest.fixture(scope="module")
def piper() -> PiperTts:
    return PiperTts(PiperOptions(models.piper_joe(), workers=1, reserved=0))


@pytest.fixture(scope="module")
def piper_reserve() -> PiperTts:
    return PiperTts(PiperOptions(models.piper_joe()))  # the defaults: 2 workers, 1 reserved


def _tracked(
    finished: list[str], name: str, synthesis: Coroutine[Any, Any, np.ndarray]
) -> asyncio.Future[np.ndarray]:
    future = asyncio.ensure_future(synthesis)
    future.add_done_callback(lambda f: finished.append(name))
    return future


@pytest.mark.models
async def test_piper_serves_the_clause_due_soonest_first(piper: PiperTts) -> None:
    """One worker, three syntheses asked for at once: the one due first starts at once; of the
    two left waiting, the first clause (due now) is made before the tail (due later), though it
    was asked for after it."""
    finished: list[str] = []
    now = asyncio.get_running_loop().time()
    results = await asyncio.wait_for(
        asyncio.gather(
            _tracked(finished, "running", piper.synthesize(TAIL, due=now - 1.0)),
            _tracked(finished, "tail", piper.synthesize("and the garden stays open.", due=now + 5)),
            _tracked(finished, "first", piper.synthesize("Yes, right around the corner.", due=now)),
        ),
        timeout=120,
    )
    assert finished == ["running", "first", "tail"]
    assert all(len(audio) > 0.5 * piper.sample_rate for audio in results)


@pytest.mark.models
async def test_piper_makes_a_first_clause_beside_a_long_tail(piper_reserve: PiperTts) -> None:
    """The defaults: a long tail not yet due is being made, another waits; a first clause
    asked for after both is made at once by the reserved worker and done before either."""
    finished: list[str] = []
    now = asyncio.get_running_loop().time()
    await asyncio.wait_for(
        asyncio.gather(
            _tracked(finished, "tail1", piper_reserve.synthesize(TAIL, due=now + 30)),
            _tracked(finished, "tail2", piper_reserve.synthesize(TAIL, due=now + 30)),
            _tracked(finished, "first", piper_reserve.synthesize("Yes, right here.", due=now)),
        ),
        timeout=120,
    )
    assert finished == ["first", "tail1", "tail2"]
