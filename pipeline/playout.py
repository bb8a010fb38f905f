"""Real-time playout of one reply: 20 ms frames on the clock, and what has been heard.

The transport adapters send frames the moment :class:`Playout` emits them, so pacing here is
what keeps barge-in possible: at most ``lead_ms`` of audio is ever ahead of the listener. The
played position is computed from the clock, so after an interruption the reply can be cut to the
text whose audio was actually heard (:meth:`Playout.heard_text`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .clock import Clock

SPEAKING_RATE = 2.5
"""Words a second of speech (150 a minute), for a segment whose length is not yet known."""


@dataclass(slots=True)
class Segment:
    """A piece of synthesized speech and the text it says."""

    text: str
    audio: np.ndarray  # int16 at the playout rate


class Playout:
    """Paces segments out as frames. Not thread-safe; one per reply."""

    def __init__(
        self,
        clock: Clock,
        emit: Callable[[np.ndarray], None],
        *,
        rate: int,
        frame_ms: int = 20,
        lead_ms: int = 60,
    ) -> None:
        self._clock = clock
        self._emit = emit
        self.rate = rate
        self.frame_samples = rate * frame_ms // 1000
        self._lead = lead_ms / 1000.0
        self._segments: list[tuple[str, int, int]] = []  # (text, first sample, sample count)
        self._queued = 0  # samples of all segments so far
        self._carry = np.zeros(0, dtype=np.int16)  # less than a frame, waiting for more audio
        self.sent_samples = 0
        self._base_time = 0.0
        self._base_samples = 0
        self.stopped = False
        self.growing = False
        """The last segment's audio is still coming (a remote model's): its words are counted
        at a speaking rate, not in proportion to the audio so far (which would say the whole
        clause was heard when only its first piece was)."""
        self._reported: tuple[int, float] | None = None  # (samples heard, when), from outside
        self._resumed = asyncio.Event()
        self._resumed.set()

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def pause(self) -> None:
        """Hold the audio (the caller may be cutting in); nothing is lost, :meth:`resume` goes on
        from the same sample."""
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    async def play(self, segment: Segment) -> None:
        """Send one segment in real time, in whole frames (a remainder waits for the next
        segment or :meth:`drain`). Audio without text goes on saying the previous segment's
        words (a remote model's audio comes in pieces after their transcript). Cancel-safe: a
        cancelled play sends nothing more."""
        if not segment.text and self._segments:
            text, first, count = self._segments[-1]
            self._segments[-1] = (text, first, count + len(segment.audio))
        else:
            self._segments.append((segment.text, self._queued, len(segment.audio)))
        self._queued += len(segment.audio)
        audio = np.concatenate([self._carry, segment.audio])
        whole = len(audio) - len(audio) % self.frame_samples
        self._carry = audio[whole:]
        await self._send(audio[:whole])

    async def drain(self) -> None:
        """Send the last partial frame (padded with silence), then wait until everything sent
        has been played at the listener's pace."""
        if len(self._carry):
            padding = np.zeros(self.frame_samples - len(self._carry), dtype=np.int16)
            audio, self._carry = np.concatenate([self._carry, padding]), self._carry[:0]
            await self._send(audio)
        await self._clock.sleep_until(self._due(self.sent_samples) + self._lead)

    async def _send(self, audio: np.ndarray) -> None:
        if len(audio) == 0:
            return
        now = self._clock.now()
        if now >= self._due(self.sent_samples):  # first audio, or an underrun: restart timeline
            self._base_time, self._base_samples = now, self.sent_samples
        for start in range(0, len(audio), self.frame_samples):
            await self._clock.sleep_until(self._due(self.sent_samples))
            if not self._resumed.is_set():
                await self._resumed.wait()
                self._base_time, self._base_samples = self._clock.now(), self.sent_samples
            if self.stopped:
                return
            frame = audio[start : start + self.frame_samples]
            self.sent_samples += len(frame)
            self._emit(frame)

    def stop(self) -> None:
        """Emit nothing from now on (barge-in); takes effect before the task is cancelled."""
        self.stopped = True

    def report_heard(self, samples: int) -> None:
        """The transport knows the listener has heard the first ``samples`` (a Twilio mark
        echoed, frames the WebRTC track released): from now on that is the reference."""
        if self._reported is None or samples > self._reported[0]:
            self._reported = (min(samples, self.sent_samples), self._clock.now())

    def played_samples(self) -> int:
        """What the listener has heard by now: the clock's estimate from the frames' pacing,
        or — once the transport has reported a position — that position plus the time since,
        never beyond the estimate."""
        if not self._segments:
            return 0
        elapsed = self._clock.now() - self._base_time
        heard = self._base_samples + int(elapsed * self.rate)
        if self._reported is not None:
            samples, at = self._reported
            heard = min(heard, samples + int((self._clock.now() - at) * self.rate))
        return max(0, min(self.sent_samples, heard))

    def played_ms(self) -> int:
        return self.played_samples() * 1000 // self.rate

    def heard_text(self, upto_samples: int | None = None) -> str:
        """The text whose audio has been played (up to ``upto_samples``, default: now).

        Whole segments count fully; within the segment playing at the cut, words are counted in
        proportion to the samples heard — piece-level alignment with word interpolation.
        """
        played = self.played_samples() if upto_samples is None else upto_samples
        words: list[str] = []
        last = len(self._segments) - 1
        for i, (text, first, count) in enumerate(self._segments):
            seg_words = text.split()
            if i == last and self.growing:
                count = max(count, int(len(seg_words) * self.rate / self._words_per_second()))
            if played >= first + count:
                words.extend(seg_words)
                continue
            if played > first and count:
                words.extend(seg_words[: int(len(seg_words) * (played - first) / count)])
            break
        return " ".join(words)

    def _words_per_second(self) -> float:
        """This reply's speaking rate so far (its whole segments), else a typical 2.5."""
        done = self._segments[:-1]
        samples = sum(count for _, _, count in done)
        if samples < self.rate:  # under a second: too little to tell
            return SPEAKING_RATE
        return min(6.0, max(1.0, sum(len(t.split()) for t, _, _ in done) * self.rate / samples))

    def _due(self, sample: int) -> float:
        return self._base_time + (sample - self._base_samples) / self.rate - self._lead
