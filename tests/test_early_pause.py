"""The tentative pause from the loudness (``vad.early_pause_db``), in a session on virtual
time: a VAD whose probability trails the sound by 96 ms (as Silero's does), the early
transcription starting sooner with the loudness, and still used for the reply."""

from __future__ import annotations

import numpy as np

from pipeline import messages as m
from pipeline.session import Tuning

from .fakes import fake_engines, silence, tone
from .harness import Harness


class TrailingVad:
    """0.95 for a loud window and for the 3 windows after one (a VAD's own tail)."""

    window = 512

    def __init__(self) -> None:
        self._tail = 0

    def stream(self) -> TrailingVad:
        return self

    async def probabilities(self, windows: np.ndarray) -> list[float]:
        out = []
        for w in windows:
            if np.abs(w).mean() > 1000:
                self._tail = 3
                out.append(0.95)
            elif self._tail > 0:
                self._tail -= 1
                out.append(0.9)
            else:
                out.append(0.02)
        return out


async def _asr_start(early_pause_db: float) -> tuple[float, int, bool]:
    """When the caller's speech ended, when the transcription started (virtual s after the
    speech), how many transcriptions ran, and whether the reply was heard."""
    engines = fake_engines(["what time is it?"], ["It is noon."])
    engines.vad = TrailingVad()
    started: list[float] = []
    asr = engines.asr
    transcribe = asr.transcribe

    async def timed(audio: np.ndarray, *, owner: str = "") -> str:
        started.append(h.clock.now())
        return await transcribe(audio, owner=owner)

    asr.transcribe = timed  # type: ignore[method-assign]
    async with Harness(engines, tuning=Tuning(early_pause_db=early_pause_db)) as h:
        await h.feed(silence(0.2))
        await h.feed(tone(0.8))
        speech_end = h.clock.now()
        await h.feed_until(silence(0.02), m.ReplyDone)
        heard = bool(h.of(m.ReplyAudio))
    return started[0] - speech_end, len(started), heard


async def test_the_loudness_starts_the_transcription_sooner_and_it_is_used() -> None:
    vad_only, calls_vad, heard_vad = await _asr_start(0.0)
    loud, calls_loud, heard_loud = await _asr_start(35.0)
    assert heard_vad and heard_loud
    assert calls_vad == calls_loud == 1  # the early transcription made the reply both times
    assert vad_only - loud >= 0.09  # the VAD's 96 ms tail no longer delays it


async def _turn_ended_after(tuning: Tuning) -> tuple[float, str]:
    """Virtual seconds from the end of the caller's sound to the turn's end (the committed
    input), and what was heard."""
    engines = fake_engines(["what time is it?"], ["It is noon."])
    engines.vad = TrailingVad()
    async with Harness(engines, tuning=tuning) as h:
        await h.feed(silence(0.2))
        await h.feed(tone(0.8))
        speech_end = h.clock.now()
        await h.feed_until(silence(0.02), m.ReplyDone)
        (committed_at, _), *_ = h.timed(m.InputCommitted)
        (transcript,) = [e.transcript for e in h.of(m.UserTranscript)]
    return committed_at - speech_end, transcript


async def test_silence_from_loudness_ends_the_turn_a_vad_tail_sooner() -> None:
    vad, heard_vad = await _turn_ended_after(
        Tuning(early_pause_db=35.0, silence_from_loudness_ms=0)
    )
    loud, heard_loud = await _turn_ended_after(
        Tuning(early_pause_db=35.0, silence_from_loudness_ms=150)
    )
    assert heard_vad == heard_loud == "what time is it?"
    assert 0.08 <= vad - loud <= 0.11  # the VAD's 96 ms tail (3 windows) no longer counted
