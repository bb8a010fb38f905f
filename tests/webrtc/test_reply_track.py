"""The agent's voice on the WebRTC track keeps to real time: one 20 ms frame per 20 ms of the
clock (or, encoding Opus itself, one 10 ms packet per 10 ms), never ahead of it, RTP timestamps
contiguous; a sender that stalled catches up, and speech leaves in the first frame slot after it
was queued. The answer asks the caller for the same frame length. Virtual time, no network."""

from __future__ import annotations

import asyncio
import fractions

import numpy as np
import pytest
from av import CodecContext, Packet

from pipeline.clock import VirtualClock
from transports.sdp import audio_codec, with_ptime
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


async def pull_packets(
    track: ReplyTrack, clock: VirtualClock, packets: int
) -> list[tuple[float, Packet]]:
    out = []
    for _ in range(packets):
        packet = await track.recv()
        assert isinstance(packet, Packet)
        out.append((clock.now(), packet))
    return out


async def test_an_opus_track_sends_10_ms_packets_in_10_ms_slots_that_decode_to_the_reply() -> None:
    clock = VirtualClock()
    track = ReplyTrack(clock, 100)
    track.encode_opus(10)
    puller = asyncio.create_task(pull_packets(track, clock, 30))
    await clock.advance(0.053)  # silence until the reply's first frame is ready
    track.push(speech(0.1))  # 10 frames of 10 ms
    await clock.advance(0.3)
    sent = await puller
    decoder = CodecContext.create("libopus", "r")
    levels = []
    for k, (at, packet) in enumerate(sent):
        assert packet.pts == k * 480 and packet.time_base == fractions.Fraction(1, RATE)
        assert k * 0.01 - 1e-9 <= at < k * 0.01 + 1e-6  # one per 10 ms slot, never ahead
        (frame,) = decoder.decode(Packet(bytes(packet)))
        assert frame.samples == 480
        levels.append(int(np.abs(frame.to_ndarray()).max()))
    first = next(k for k, level in enumerate(levels) if level > 2000)
    assert first == 6  # the first slot after 53 ms: 60 ms (the codec's 2.5 ms look-ahead aside)
    assert all(level > 2000 for level in levels[first : first + 9])  # the whole reply
    assert max(levels[first + 11 :]) < 500  # then silence (below the page's "audible")
    assert track.released == 10


def decoded_levels(sent: list[tuple[float, Packet]]) -> list[int]:
    """The loudest sample of each packet decoded (a DTX packet decodes to concealment: 0)."""
    decoder = CodecContext.create("libopus", "r")
    levels = []
    for _, packet in sent:
        (frame,) = decoder.decode(Packet(bytes(packet)))
        levels.append(int(np.abs(frame.to_ndarray()).max()))
    return levels


async def test_with_dtx_a_silent_agent_sends_dtx_packets_and_its_speech_leaves_at_once() -> None:
    clock = VirtualClock()
    track = ReplyTrack(clock, 100)
    track.encode_opus(10, dtx=True)
    puller = asyncio.create_task(pull_packets(track, clock, 6 + 3 + 10 + 6))
    await clock.advance(0.9)
    assert not puller.done()  # silence (the hang-over), then a DTX packet every 400 ms
    await clock.advance(0.0237)  # the reply is ready between two 10 ms slots
    track.push(speech(0.1))
    await clock.advance(0.5)
    sent = await puller
    times = [round(at, 4) for at, _ in sent]
    sizes = [len(bytes(packet)) for _, packet in sent]
    pts = [packet.pts for _, packet in sent]
    assert times[:9] == [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.46, 0.86]
    assert sizes[6:9] == [1, 1, 1] and min(sizes[:6] + sizes[9:]) > 1  # TOC-only: DTX
    assert pts[:9] == [480 * k for k in range(7)] + [int(0.46 * RATE), int(0.86 * RATE)]
    # the talk spurt starts the moment it is queued, then keeps to one packet per 10 ms
    assert times[9:19] == [round(0.9237 + 0.01 * k, 4) for k in range(10)]
    assert pts[9] == int(0.9237 * RATE)  # RTP time jumped over the pause: played when sent
    assert pts[9:] == [pts[9] + 480 * k for k in range(16)]
    levels = decoded_levels(sent)
    assert max(levels[:9]) == 0 and all(level > 2000 for level in levels[10:18])
    assert max(levels[-4:]) < 500  # the hang-over after the reply: silence again
    assert track.released == 10


async def test_with_dtx_a_pause_shorter_than_the_hang_over_is_sent_as_silence() -> None:
    clock = VirtualClock()
    track = ReplyTrack(clock, 100)
    track.encode_opus(10, dtx=True)
    track.push(speech(0.05))
    puller = asyncio.create_task(pull_packets(track, clock, 14))
    await clock.advance(0.084)  # 3 frames of silence out (50, 60, 70, 80 ms: 4), then more
    track.push(speech(0.05))
    await clock.advance(0.2)
    sent = await puller
    pts = [packet.pts for _, packet in sent]
    assert pts == [480 * k for k in range(14)]  # contiguous: no talk spurt started
    assert min(len(bytes(packet)) for _, packet in sent) > 1  # and no DTX packet
    audible = [level > 2000 for level in decoded_levels(sent)]
    assert audible[1:5] == [True] * 4 and audible[6:9] == [False] * 3 and audible[10] is True


async def test_with_dtx_a_held_reply_sends_silence_and_a_stopped_track_ends_its_pause() -> None:
    from aiortc.mediastreams import MediaStreamError

    clock = VirtualClock()
    held = True
    track = ReplyTrack(clock, 100, held=lambda: held)
    track.encode_opus(20, dtx=True)
    track.push(speech(0.2))
    sent = await asyncio.wait_for(
        asyncio.gather(pull_packets(track, clock, 10), clock.advance(0.3)), 5
    )
    assert [packet.pts for _, packet in sent[0]] == [960 * k for k in range(10)]
    assert track.queued == 10 and track.released == 0  # held: silence, the reply kept
    track.flush()
    held = False
    quiet = await asyncio.wait_for(
        asyncio.gather(pull_packets(track, clock, 1), clock.advance(0.02)), 5
    )
    assert len(bytes(quiet[0][0][1])) == 1  # nothing to say after the hold's silence: DTX
    waiting = asyncio.create_task(track.recv())
    await clock.advance(0.3)
    assert not waiting.done()  # paused until the next DTX packet is due
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(waiting, 5)


async def test_a_woken_track_streams_silence_until_the_reply_and_pauses_again_after_it() -> None:
    clock = VirtualClock()
    track = ReplyTrack(clock, 100)
    track.encode_opus(10, dtx=True)
    puller = asyncio.create_task(pull_packets(track, clock, 8 + 26 + 5 + 6 + 1))
    await clock.advance(0.5)  # the hang-over, a DTX packet at 60 ms and one at 460 ms
    track.wake()  # at 0.5 s, mid-pause: a reply is coming
    await clock.advance(0.2502)
    track.push(speech(0.05))  # it comes 250 ms later
    await clock.advance(1.0)
    sent = await asyncio.wait_for(puller, 5)
    times = [round(at, 4) for at, _ in sent]
    sizes = [len(bytes(packet)) for _, packet in sent]
    pts = [packet.pts for _, packet in sent]
    assert times[:8] == [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.46]
    assert sizes[6:8] == [1, 1]
    # woken: the pause ends at once, silence in every 10 ms slot, the RTP time jumped to the clock
    assert times[8:33] == [round(0.5 + 0.01 * k, 4) for k in range(25)]
    assert pts[8] == int(0.5 * RATE) and pts[8:45] == [pts[8] + 480 * k for k in range(37)]
    assert min(sizes[8:45]) > 1  # no DTX packet between the wake and the reply's hang-over
    levels = decoded_levels(sent)
    assert max(levels[8:34]) < 500 and all(level > 2000 for level in levels[35:38])
    # the reply took the wake: after it and its hang-over, DTX again and nothing more
    assert sizes[45] == 1 and times[45] == 0.87
    assert track.released == 5


async def test_a_wake_with_no_reply_runs_out_and_without_dtx_changes_nothing() -> None:
    clock = VirtualClock()
    track = ReplyTrack(clock, 100)
    track.encode_opus(10, dtx=True)
    puller = asyncio.create_task(pull_packets(track, clock, 7 + 10 + 1))
    await clock.advance(0.1)
    track.wake(30_000)
    track.wake(100)  # set again: nothing comes within 100 ms of it, DTX again
    await clock.advance(0.5)
    sent = await asyncio.wait_for(puller, 5)
    sizes = [len(bytes(packet)) for _, packet in sent]
    assert sizes[6] == 1 and min(sizes[7:17]) > 1 and sizes[17] == 1
    assert round(sent[17][0], 4) == 0.2
    plain = ReplyTrack(clock, 100)
    plain.encode_opus(10)
    plain.wake()  # no DTX: a continuous stream anyway
    streamed, _ = await asyncio.wait_for(
        asyncio.gather(pull_packets(plain, clock, 10), clock.advance(0.1)), 5
    )
    assert min(len(bytes(packet)) for _, packet in streamed) > 1


async def test_the_framing_changes_only_before_the_track_is_used() -> None:
    track = ReplyTrack(VirtualClock(), 100)
    with pytest.raises(ValueError, match="use 10 or 20"):
        track.encode_opus(15)
    track.push(speech(0.04))
    with pytest.raises(RuntimeError, match="before it is used"):
        track.encode_opus(10)


OFFERED = (
    "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sctp-port:5000\r\n"
)


def test_the_answer_names_its_codec_and_asks_for_the_frame_length() -> None:
    assert audio_codec(OFFERED) == "opus"
    assert audio_codec(OFFERED.replace("111 0", "0 111")) == "pcmu"
    assert audio_codec("v=0\r\nm=application 9 UDP/DTLS/SCTP x\r\n") is None
    asked = with_ptime(OFFERED, 10)
    audio, application = asked.split("m=application")
    assert audio.endswith("a=rtpmap:0 PCMU/8000\r\na=ptime:10\r\n")  # one ptime, the new one
    assert "ptime" not in application and audio.count("a=ptime") == 1
    assert with_ptime("v=0\r\n", 10) == "v=0\r\n"  # no audio: unchanged
