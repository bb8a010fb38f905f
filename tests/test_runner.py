"""The session runner every transport uses: a real Session with fake engines on virtual time,
and ``deliver`` functions that work, fail or stall."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pipeline import messages as m
from pipeline.clock import VirtualClock, settle
from pipeline.context import Item
from pipeline.session import Session, SessionSettings
from transports.runner import SessionRunner

from .fakes import fake_engines

log = logging.getLogger("voice.transport.test")


def new_session(clock: VirtualClock) -> Session:
    return Session(
        fake_engines(["hi"], ["Hello."]), SessionSettings(turn_detection=None), clock=clock
    )


class Wire:
    """A transport's output: records what it delivered; can be told to fail or stall."""

    def __init__(self) -> None:
        self.delivered: list[m.SessionEvent] = []
        self.fail: Exception | None = None
        self.stall = False

    async def deliver(self, event: m.SessionEvent) -> None:
        if self.fail is not None:
            raise self.fail
        if self.stall:
            await asyncio.Event().wait()  # a peer that stopped reading: the send never completes
        self.delivered.append(event)


def runner_for(session: Session, wire: Wire) -> SessionRunner:
    return SessionRunner(session, wire.deliver, log=log, peer="peer", send_timeout=5.0)


def ended_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "ended (" in r.getMessage()]


async def test_events_reach_the_wire_until_the_session_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    clock, wire = VirtualClock(), Wire()
    session = new_session(clock)
    runner = runner_for(session, wire)
    runner.start()
    session.add_item(Item("item_1", "user", text="hello there"))
    await settle()
    assert [type(e) for e in wire.delivered] == [m.ItemAdded]
    session.close("done talking")
    assert await runner.wait() == "done talking"
    assert isinstance(wire.delivered[-1], m.SessionClosed)  # the last event went out
    assert runner.ended
    await runner.stop("ignored: the session has closed already")
    assert session.closed_reason == "done talking"
    (line,) = ended_lines(caplog)
    assert "done talking" in line and "hello there" in line


async def test_a_send_that_stalls_ends_the_session_on_virtual_time() -> None:
    clock, wire = VirtualClock(), Wire()
    session = new_session(clock)
    runner = runner_for(session, wire)
    runner.start()
    wire.stall = True
    session.add_item(Item("item_1", "user", text="anyone there?"))
    await clock.advance(4.9)
    assert not runner.ended
    await clock.advance(0.2)
    assert await runner.wait() == "peer is not reading: a send timed out"
    await runner.stop(await runner.wait())
    assert session.closed_reason == "peer is not reading: a send timed out"


async def test_a_send_that_fails_ends_the_session_with_the_error() -> None:
    clock, wire = VirtualClock(), Wire()
    session = new_session(clock)
    runner = runner_for(session, wire)
    wire.fail = ConnectionResetError("gone")

    async def read() -> str:
        await asyncio.Event().wait()  # the peer never says anything
        return "unreachable"

    serving = asyncio.create_task(runner.serve(read))
    await settle()
    session.add_item(Item("item_1", "user", text="hello"))
    reason = await serving
    assert reason == "cannot send to peer: ConnectionResetError('gone')"
    assert session.closed_reason == reason


async def test_serve_ends_with_the_readers_reason_and_stops_everything(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    clock, wire = VirtualClock(), Wire()
    session = new_session(clock)
    runner = SessionRunner(
        session, wire.deliver, log=log, peer="peer", describe=lambda: "3 frames dropped"
    )
    left = asyncio.Event()
    before = asyncio.all_tasks()

    async def read() -> str:
        await left.wait()
        return "peer disconnected (close code 4000)"

    serving = asyncio.create_task(runner.serve(read))
    await settle()
    left.set()
    assert await serving == "peer disconnected (close code 4000)"
    assert session.closed_reason == "peer disconnected (close code 4000)"
    assert runner.ended
    assert asyncio.all_tasks() - before <= {asyncio.current_task()}  # nothing left running
    (line,) = ended_lines(caplog)
    assert "(peer disconnected (close code 4000)): 3 frames dropped;" in line


async def test_serve_cancels_the_reader_when_the_session_closes_first() -> None:
    clock, wire = VirtualClock(), Wire()
    session = new_session(clock)
    runner = runner_for(session, wire)
    reader_cancelled = asyncio.Event()

    async def read() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            reader_cancelled.set()
            raise
        return "unreachable"

    serving = asyncio.create_task(runner.serve(read))
    await settle()
    session.close("server shutting down")
    assert await serving == "server shutting down"
    assert reader_cancelled.is_set()
    assert isinstance(wire.delivered[-1], m.SessionClosed)


async def test_a_cancelled_serve_still_closes_the_session() -> None:
    clock, wire = VirtualClock(), Wire()
    session = new_session(clock)
    runner = runner_for(session, wire)

    async def read() -> str:
        await asyncio.Event().wait()
        return "unreachable"

    serving = asyncio.create_task(runner.serve(read))
    await settle()
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert session.closed_reason == "peer disconnected"
    assert runner.ended


async def test_stop_is_idempotent_and_works_before_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    session = new_session(VirtualClock())
    runner = runner_for(session, Wire())
    await asyncio.gather(runner.stop("the offer was bad"), runner.stop("again"))
    await runner.stop("and again")
    assert session.closed_reason == "the offer was bad"
    assert len(ended_lines(caplog)) == 1
