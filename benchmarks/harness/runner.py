"""Driving the callers: one turn, one conversation (a scenario on one connection), one caller
(the scenario set, one conversation after another) and one concurrency level (N callers at once,
staggered), all bounded by a deadline. Every measurement is made afterwards from the timeline by
:func:`~benchmarks.harness.timeline.analyze_turn`; the driver only decides when to speak next."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import websockets

from .clients import Call, CallOpener, Utterance, open_call
from .scenarios import RenderedScenario, RenderedTurn
from .timeline import (
    AUDIO,
    CLEAR,
    DONE,
    MARK,
    METRICS,
    REALTIME,
    Ev,
    TurnClock,
    analyze_turn,
    blank_record,
    talking_over,
    twilio_barge_in,
)

TurnReport = Callable[[dict[str, Any]], None]


@dataclass(slots=True)
class Timing:
    turn_timeout_s: float = 45.0
    """No audible reply this long after the caller stopped speaking: a missed turn."""
    settle_s: float = 1.0
    """Silence the caller keeps after a reply ended, before the next turn."""
    gap_s: float = 0.4
    """Twilio: this long without audible agent audio ends an interrupted reply (no ``clear``)."""
    quiet_s: float = 1.5
    """Twilio: a ``mark`` after the reply's audio ends it, or this long without audible audio."""
    metrics_grace_s: float = 3.0
    """Realtime: how long to wait for ``x.voice.turn.metrics`` after ``response.done``."""
    stagger_s: float = 0.7
    """Concurrent callers start this far apart."""


class TimeUp(Exception):
    """The run's time limit came before the turn was over."""


def _now() -> float:
    return time.perf_counter()


async def _spoken(call: Call, utterances: list[Utterance], seconds: float, deadline: float) -> None:
    """Wait until the microphone has sent the last audible chunk of the last utterance (it
    should take ``seconds``; much longer, or a closed connection, means the call broke)."""
    limit = min(deadline, _now() + seconds + 30.0)
    end = utterances[-1].end
    while not end.done():
        left = limit - _now()
        if left <= 0:
            if _now() >= deadline:
                raise TimeUp
            raise ConnectionError("the microphone stopped sending")
        if call.closed is not None:
            raise ConnectionError(call.closed)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(end), min(left, 0.25))


def _check(found: object, hard: float) -> None:
    """A wait came back empty: was it the run's time limit?"""
    if found is None and _now() >= hard:
        raise TimeUp


class TurnDriver:
    def __init__(self, call: Call, timing: Timing, deadline: float) -> None:
        self.call = call
        self.timing = timing
        self.deadline = deadline
        self.realtime = call.protocol == REALTIME

    async def audible_reply(
        self, start: int, after: float, exclude: frozenset[str | None]
    ) -> Ev | None:
        """The first audible agent audio after ``after`` (a missed turn: None after the timeout)."""
        limit = min(self.deadline, after + self.timing.turn_timeout_s)

        def check(ev: Ev | None) -> Ev | None:
            if ev is not None and ev.kind == AUDIO and ev.loud and ev.t > after:
                return ev if ev.response not in exclude else None
            return None

        found = await self.call.until(check, start, limit)
        if found is None and limit == self.deadline:
            _check(found, self.deadline)
        return found

    async def reply_over(self, start: int, reply: Ev) -> None:
        """Wait for the end of a reply (Realtime: its ``response.done`` and metrics; Twilio: no
        audible audio for ``quiet_s``)."""
        limit = min(self.deadline, _now() + self.timing.turn_timeout_s * 2)
        if self.realtime:

            def done(ev: Ev | None) -> bool | None:
                return True if ev and ev.kind == DONE and ev.response == reply.response else None

            found = await self.call.until(done, start, limit)
            _check(found, self.deadline)
            grace = min(self.deadline, _now() + self.timing.metrics_grace_s)

            def metrics(ev: Ev | None) -> bool | None:
                return True if ev and ev.kind == METRICS and ev.response == reply.response else None

            await self.call.until(metrics, start, grace)
            return
        last = reply.t

        def quiet(ev: Ev | None) -> bool | None:
            nonlocal last
            if ev is not None:
                if ev.kind == MARK and ev.t > reply.t:  # sent after a reply's last audio
                    return True
                if ev.kind == AUDIO and ev.loud:
                    last = max(last, ev.t)
                return None
            return True if _now() - last >= self.timing.quiet_s else None

        found = await self.call.until(quiet, start, limit)
        _check(found, self.deadline)

    async def interrupted_reply_stopped(self, start: int, reply: Ev, onset: float) -> None:
        limit = min(self.deadline, _now() + self.timing.turn_timeout_s)
        if self.realtime:

            def done(ev: Ev | None) -> bool | None:
                return True if ev and ev.kind == DONE and ev.response == reply.response else None

            found = await self.call.until(done, start, limit)
        else:
            events = self.call.events

            def stopped(ev: Ev | None) -> bool | None:
                if ev is not None and ev.kind != CLEAR:
                    return None
                result = twilio_barge_in(events[start:], onset, self.timing.gap_s, _now())
                return True if result.stop is not None or not result.playing else None

            found = await self.call.until(stopped, start, limit)
        _check(found, self.deadline)

    async def drain(self, start: int) -> None:
        """After a missed turn: stop whatever may still come and let it pass."""
        with contextlib.suppress(Exception):
            await self.call.cancel_reply()
        last = _now()

        def quiet(ev: Ev | None) -> bool | None:
            nonlocal last
            if ev is not None:
                last = ev.t
                return None
            return True if _now() - last >= 1.0 else None

        await self.call.until(quiet, start, min(self.deadline, _now() + 10.0))

    async def settle(self) -> None:
        left = min(self.timing.settle_s, self.deadline - _now())
        if left > 0:
            await asyncio.sleep(left)

    async def run(self, turn: RenderedTurn, clock: TurnClock, start: int) -> None:
        """Say the turn, wait for the reply (and interrupt it if scripted), until all is over.
        ``clock`` is filled in as the turn goes (it is kept when the time limit cuts it)."""
        call, timing = self.call, self.timing
        script = turn.script
        said = call.mic.say(turn.segments, script.pauses_ms)
        try:
            await _spoken(call, said, turn.speech_s, self.deadline)
        finally:
            clock.segments = [u.resolved() for u in said]
        end = clock.segments[-1].end
        assert end is not None
        over = talking_over(call.events[start:], end) if self.realtime else frozenset()
        reply = await self.audible_reply(start, end, over)
        if reply is None:
            await self.drain(start)
            return
        if turn.barge_in is None or script.barge_in is None:
            await self.reply_over(start, reply)
            await self.settle()
            return
        wait = reply.t + script.barge_in.after_ms / 1000 - _now()
        if wait > 0:
            await asyncio.sleep(min(wait, max(0.0, self.deadline - _now())))
        interruption = call.mic.say([turn.barge_in])
        try:
            seconds = len(turn.barge_in) / turn.rate
            await _spoken(call, interruption, seconds, self.deadline)
        finally:
            clock.barge_in = interruption[0].resolved()
        onset, b_end = clock.barge_in.onset, clock.barge_in.end
        assert onset is not None and b_end is not None
        if script.barge_in.backchannel:  # the agent should go on: wait for its reply to end
            await self.reply_over(start, reply)
            await self.settle()
            return
        await self.interrupted_reply_stopped(start, reply, onset)
        after = b_end
        if not self.realtime:
            result = twilio_barge_in(call.events[start:], onset, timing.gap_s, _now())
            after = max(b_end, result.stop or b_end, result.clear or b_end)
        exclude = frozenset({reply.response}) if self.realtime else frozenset()
        second = await self.audible_reply(start, after, exclude)
        if second is None:
            await self.drain(start)
        else:
            await self.reply_over(start, second)
            await self.settle()


def turn_record(
    call: Call,
    turn: RenderedTurn,
    clock: TurnClock,
    start: int,
    timing: Timing,
    *,
    cut: bool = False,
) -> dict[str, Any]:
    script = turn.script
    rec: dict[str, Any] = {
        "turn": script.name,
        "kind": script.kind,
        "text": script.text,
        "barge_in_text": script.barge_in.text if script.barge_in else None,
        "speech_s": round(turn.speech_s, 3),
        "cut": cut,
    }
    rec.update(
        analyze_turn(
            call.events[start:],
            clock,
            text=script.text,
            pauses_ms=script.pauses_ms,
            barge_in_text=rec["barge_in_text"],
            backchannel=script.barge_in is not None and script.barge_in.backchannel,
            protocol=call.protocol,
            timeout_s=timing.turn_timeout_s,
            gap_s=timing.gap_s,
            now=_now(),
        )
    )
    return rec


def failed_record(turn: RenderedTurn, error: str) -> dict[str, Any]:
    """A turn that could not even be tried (the connection failed): missed."""
    script = turn.script
    return {
        "turn": script.name,
        "kind": script.kind,
        "text": script.text,
        "barge_in_text": script.barge_in.text if script.barge_in else None,
        "speech_s": round(turn.speech_s, 3),
        "cut": False,
        **blank_record(),
        "pauses": [{"pause_ms": p, "false_interruption": False} for p in script.pauses_ms],
        "errors": [error],
    }


async def run_conversation(
    protocol: str,
    url: str,
    rendered: RenderedScenario,
    timing: Timing,
    deadline: float,
    report: TurnReport,
    context: dict[str, Any],
    opener: CallOpener = open_call,
    before_turn: Callable[[int], Awaitable[None]] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """One scenario on one connection (made by ``opener``); returns its turn records and whether
    time ran out. ``before_turn(k)``, when given, is awaited before turn ``k`` starts (a
    benchmark interleaving these turns with other work)."""
    records: list[dict[str, Any]] = []
    time_up = False

    def keep(rec: dict[str, Any]) -> None:
        rec = {**context, "scenario": rendered.scenario.name, "index": len(records), **rec}
        records.append(rec)
        report(rec)

    try:
        async with opener(protocol, url) as call:
            await asyncio.sleep(min(timing.settle_s, max(0.0, deadline - _now())))
            for turn in rendered.turns:
                if before_turn is not None:
                    await before_turn(len(records))
                if _now() >= deadline:
                    time_up = True
                    break
                driver = TurnDriver(call, timing, deadline)
                clock, start = TurnClock(_now()), len(call.events)
                try:
                    await driver.run(turn, clock, start)
                except TimeUp:
                    time_up = True
                    keep(turn_record(call, turn, clock, start, timing, cut=True))
                    break
                keep(turn_record(call, turn, clock, start, timing))
                if call.closed is not None:
                    break
            if call.closed is not None and not time_up:
                for turn in rendered.turns[len(records) :]:
                    keep(failed_record(turn, call.closed))
    except (OSError, TimeoutError, websockets.WebSocketException) as exc:
        message = f"{type(exc).__name__}: {exc}"
        for turn in rendered.turns[len(records) :]:
            keep(failed_record(turn, message))
    return records, time_up
