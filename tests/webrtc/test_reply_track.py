"""The agent's voice on the WebRTC track keeps to real time: one 20 ms frame per 20 ms of the
clock, never ahead of it, RTP timestamps contiguous; a sender that stalled catches up, and speech
leaves in the first frame slot after it was queued. Virtual time, no network."""

from __future__ import annotations

import asyncio

import numpy as np

from pipeline.clock import VirtualClock
from transports.webrtc import FRAME, RATE, ReplyTrack

SLOT = FRAME / RATE  # 20 ms


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


async def pull(
    track: ReplyTrack, clock: VirtualClock, frames: int
) -> list[tuple[float, int, bool]]:
    """(when, pts, audible) of each frame, pulled as aiortc's sender pulls them."""
    out = []
    for _ in range(frames):
        frame = await track.recv()
        out.append((clock.now(), int(frame.pts or 0), bool(np.abs(frame.to_ndarray()).max() > 0)))
    return out


async def test_frames_leave_in_real_time_and_never_ahead_of_it() -> None:
    clock = VirtualClock()
    track = ReplyTrack(clock, 100)
    track.push(speech(0.5))
    puller = asyncio.create_task(pull(track, clock, 40))
    await clock.advance(1.0)
    frames = await puller
    for k, (at, pts, _) in enumerate(frames):
        assert pts == k * FRAME  # contiguous RTP time
        assert at >= k * SLOT - 1e-9  # never before its slot
        assert at - k * SLOT < 1e-6  # and not late on an idle clock
    assert [audible for *_, audible in frames] == [True] * 25 + [False] * 15  # then silence


async def test_a_stalled_sender_catches_up_without_running_ahead() -> None:
    clock = VirtualClock()
    track = ReplyTrack(clock, 100)
    track.push(speech(0.4))
    frames = asyncio.create_task(pull(track, clock, 5))
    await clock.advance(0.08)
    first = await frames
    await clock.advance(0.1)  # nobody pulls for 100 ms (a busy event loop)
    frames = asyncio.create_task(pull(track, clock, 10))
    await clock.advance(0.2)
    later = await frames
    released = first + later
    for k, (at, pts, _) in enumerate(released):
        assert pts == k * FRAME
        assert at >= k * SLOT - 1e-9
    # the frames that fell behind leave at once, then the pace is one per slot again
    assert [round(at, 3) for at, *_ in later[:6]] == [0.18] * 5 + [0.2]
    assert round(later[-1][0], 3) == 0.28


async def test_speech_leaves_in_the_first_slot_after_it_is_queued() -> None:
    clock = VirtualClock()
    track = ReplyTrack(clock, 100)
    puller = asyncio.create_task(pull(track, clock, 10))
    await clock.advance(0.053)  # silence until the reply's first frame is ready
    track.push(speech(0.1))
    await clock.advance(0.2)
    frames = await puller
    first = next(at for at, _, audible in frames if audible)
    assert 0.053 <= first <= 0.053 + SLOT


async def test_a_held_track_keeps_its_queue_and_sends_silence_until_resumed() -> None:
    clock = VirtualClock()
    held = False
    track = ReplyTrack(clock, 100, held=lambda: held)
    track.push(speech(0.2))  # 10 frames
    puller = asyncio.create_task(pull(track, clock, 20))
    await clock.advance(0.07)  # 4 frames out (at 0, 20, 40, 60 ms)
    held = True  # the caller may be cutting in
    await clock.advance(0.1)
    assert track.queued == 6  # nothing released while held
    held = False  # it was not speech: the agent goes on where it stopped
    await clock.advance(0.3)
    audible = [a for *_, a in await puller]
    assert audible == [True] * 4 + [False] * 5 + [True] * 6 + [False] * 5
