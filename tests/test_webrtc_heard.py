"""What the caller heard comes from the WebRTC track: the frames it releases (aiortc pulls one per
20 ms to send it) are what has been played, and the session follows that position. No network:
the track is pulled by hand on virtual time."""

from __future__ import annotations

import asyncio

from pipeline import messages as m
from pipeline.clock import VirtualClock
from pipeline.session import SessionSettings
from transports.realtime.config import RealtimeConfig
from transports.realtime.connection import RealtimeConnection
from transports.webrtc import RATE, WAKE_MS, ReplyTrack, WebRtcCall, WebRtcOptions

from .fakes import fake_engines, tone
from .harness import Harness

WORDS = "one two three four five six seven eight nine ten"


async def pull(track: ReplyTrack, frames: int) -> None:
    for _ in range(frames):
        await track.recv()


def call_on(h: Harness, options: WebRtcOptions) -> WebRtcCall:
    """A WebRTC call on the harness's session (no peer: its track is pulled by hand)."""
    conn = RealtimeConnection(
        h.session, RealtimeConfig("voice-local", h.session.settings), max_event_bytes=1 << 20
    )
    return WebRtcCall(conn, options, lambda call: None)


async def sizes(call: WebRtcCall, h: Harness, packets: int) -> list[int]:
    """The sizes of the next ``packets`` packets of the call's Opus track, one 10 ms slot each."""
    out = []
    for _ in range(packets):
        pulled = asyncio.ensure_future(call.track.recv())
        await h.clock.advance(0.01)
        out.append(len(bytes(await asyncio.wait_for(pulled, 5))))
    return out


async def test_the_track_reports_each_released_frame_of_an_item() -> None:
    clock = VirtualClock()
    heard: list[tuple[str, int]] = []
    track = ReplyTrack(clock, 100, lambda item_id, ms: heard.append((item_id, ms)))
    track.push(tone(0.06, RATE), "item_a")  # 3 frames
    track.push(tone(0.03, RATE), "item_b")  # 1.5 frames: the last one padded
    track.push(tone(0.02, RATE))  # audio of no item: played, not reported
    puller = asyncio.create_task(pull(track, 8))
    await clock.advance(0.2)
    await puller
    # on release, everything of the item before that frame has been played
    assert heard == [("item_a", 0), ("item_a", 20), ("item_a", 40), ("item_b", 0), ("item_b", 20)]
    assert track.released == 6 and track.queued == 0


async def test_flushed_frames_are_never_reported() -> None:
    clock = VirtualClock()
    heard: list[tuple[str, int]] = []
    track = ReplyTrack(clock, 100, lambda item_id, ms: heard.append((item_id, ms)))
    track.push(tone(0.1, RATE), "item_a")
    puller = asyncio.create_task(pull(track, 2))
    await clock.advance(0.02)
    await puller
    assert track.flush() == 3  # barge-in: the rest of item_a never plays
    track.push(tone(0.04, RATE), "item_b")
    puller = asyncio.create_task(pull(track, 4))
    await clock.advance(0.1)
    await puller
    assert heard == [("item_a", 0), ("item_a", 20), ("item_b", 0), ("item_b", 20)]


async def test_a_barge_in_over_webrtc_keeps_what_the_track_released() -> None:
    """The far end pulls late (a slow start, a stalled sender): 600 ms of the reply wait in the
    track. The clock alone would say six words were heard at the barge-in; the track says three."""
    engines = fake_engines(["hi"], [WORDS], ms_per_word=200)
    settings = SessionSettings(turn_detection=None, output_rate=RATE)
    async with Harness(engines, settings, lead_ms=0) as h:
        call = call_on(h, WebRtcOptions(max_queued_ms=10_000))
        try:
            h.session.create_response()
            seen, queued_ms, puller = 0, 0, None
            while queued_ms < 1200:
                await h.clock.advance(0.02)
                for _, event in h.events[seen:]:
                    call._render(event)
                    if isinstance(event, m.ReplyAudio):
                        queued_ms += len(event.audio) * 1000 // RATE
                seen = len(h.events)
                if puller is None and queued_ms >= 600:
                    puller = asyncio.create_task(pull(call.track, 1000))
            assert puller is not None and call.track.released >= 25
            h.session.cancel_response()
            await h.clock.advance(0.02)
            for _, event in h.events[seen:]:
                call._render(event)
            assert call.track.queued == 0  # the cancelled reply's frames are flushed
            puller.cancel()
        finally:
            await call.close("test over")
    (done,) = h.of(m.ReplyDone)
    assert done.status == "cancelled" and done.item is not None
    assert done.item.text == "one two three"
    assert 560 <= done.item.audio_ms <= 640, done.item.audio_ms


async def test_a_call_wakes_its_quiet_track_while_the_caller_speaks() -> None:
    """With DTX the idle track sends DTX packets; the caller's speech (a reply may follow)
    starts the stream again, so the reply does not begin a talk spurt after comfort noise in
    the caller's jitter buffer; the end of their turn gives it WAKE_MS more, no longer."""
    engines = fake_engines(["hi"], [WORDS])
    async with Harness(engines, SessionSettings(output_rate=RATE), lead_ms=0) as h:
        call = call_on(h, WebRtcOptions())
        try:
            call.track.encode_opus(10, dtx=True)
            assert (await sizes(call, h, 7))[6] == 1  # the hang-over, then DTX (the next in 400 ms)
            call._render(m.SpeechStarted("item_caller", 1000))
            assert min(await sizes(call, h, 10)) > 1  # silence in every slot: the stream is back
            await h.clock.advance(WAKE_MS / 1000 + 1)  # (a caller speaking for a while)
            assert min(await sizes(call, h, 3)) > 1
            call._render(m.SpeechStopped("item_caller", 6000))
            await h.clock.advance(WAKE_MS / 1000 - 0.045)  # no reply came
            last = await sizes(call, h, 6)
            assert min(last[:5]) > 1 and last[5] == 1  # WAKE_MS after their turn: DTX again
        finally:
            await call.close("test over")


async def test_with_dtx_wake_off_the_callers_speech_leaves_the_track_quiet() -> None:
    engines = fake_engines(["hi"], [WORDS])
    async with Harness(engines, SessionSettings(output_rate=RATE), lead_ms=0) as h:
        call = call_on(h, WebRtcOptions(dtx_wake=False))
        try:
            call.track.encode_opus(10, dtx=True)
            await sizes(call, h, 7)  # the hang-over, then DTX
            call._render(m.SpeechStarted("item_caller", 1000))
            waiting = asyncio.ensure_future(call.track.recv())
            await h.clock.advance(0.2)
            assert not waiting.done()  # still paused: the next DTX packet is 400 ms away
            await h.clock.advance(0.25)
            assert len(bytes(await asyncio.wait_for(waiting, 5))) == 1
        finally:
            await call.close("test over")
