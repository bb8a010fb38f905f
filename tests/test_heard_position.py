"""What the caller heard comes from the transport where it knows: Twilio's echoed marks re-anchor
the session's estimate, so a barge-in keeps only the words the caller really heard."""

from __future__ import annotations

import asyncio
import json

from pipeline import messages as m
from pipeline.clock import VirtualClock
from pipeline.playout import Playout, Segment
from pipeline.session import SessionSettings
from transports.twilio import PROGRESS_MARK_MS, TwilioStream

from .fakes import fake_engines, tone
from .harness import Harness
from .test_twilio_messages import SID, frame, start

WORDS = "one two three four five six seven eight nine ten"


async def test_the_playout_follows_the_position_the_transport_reports() -> None:
    clock = VirtualClock()
    sent: list[int] = []
    playout = Playout(clock, lambda f: sent.append(len(f)), rate=8000, lead_ms=0)
    playing = asyncio.create_task(playout.play(Segment("a b c d", tone(1.0, 8000))))
    await clock.advance(1.0)
    await playing
    assert playout.played_ms() == 1000
    playout.report_heard(2000)  # 250 ms: the listener is behind the clock's estimate
    assert playout.played_ms() == 250
    assert playout.heard_text() == "a"
    await clock.advance(0.25)
    assert playout.played_ms() == 500  # the reported position moves on in real time
    playout.report_heard(1000)  # an older report changes nothing
    assert playout.played_ms() == 500


async def _play_until(h: Harness, stream: TwilioStream, ms: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    seen, sent_ms = 0, 0
    while sent_ms < ms:
        await h.clock.advance(0.02)
        for _, event in h.events[seen:]:
            for text in stream.render(event):
                out.append(json.loads(text))
                if out[-1]["event"] == "media":
                    sent_ms += 20
        seen = len(h.events)
    return out


async def test_a_barge_in_over_twilio_keeps_only_what_the_marks_say_was_heard() -> None:
    engines = fake_engines(["hi"], [WORDS], ms_per_word=200)
    async with Harness(engines, SessionSettings(turn_detection=None), lead_ms=0) as h:
        stream = TwilioStream(h.session)
        stream.receive(frame(start()))
        h.session.create_response()
        sent = await _play_until(h, stream, 1200)
        progress = [
            msg["mark"]["name"]  # type: ignore[index]
            for msg in sent
            if msg["event"] == "mark" and str(msg["mark"]["name"]).startswith("~")  # type: ignore[index]
        ]
        assert len(progress) >= 1200 // PROGRESS_MARK_MS - 1
        # Twilio's buffer is slow: only the first mark (200 ms) has come back
        stream.receive(frame({"event": "mark", "streamSid": SID, "mark": {"name": progress[0]}}))
        h.session.cancel_response()
        await h.clock.advance(0.02)
    (done,) = h.of(m.ReplyDone)
    assert done.status == "cancelled" and done.item is not None
    # 200 ms per word: the first mark says one word was heard, the clock alone would say six
    assert done.item.text == "one"
    assert done.item.audio_ms < 300


async def test_a_clause_whose_audio_is_still_coming_is_heard_at_a_speaking_rate() -> None:
    """A remote model sends a clause's transcript, then its audio in pieces: what has arrived so
    far is not the whole clause, so a cut there keeps the words said by then, not all of them."""
    clock = VirtualClock()
    playout = Playout(clock, lambda f: None, rate=8000, lead_ms=0)
    playout.growing = True
    first = asyncio.create_task(playout.play(Segment("one two three four five", tone(2.0, 8000))))
    await clock.advance(2.0)
    await first
    clause = "six seven eight nine ten eleven twelve thirteen fourteen fifteen"
    piece = asyncio.create_task(playout.play(Segment(clause, tone(0.9, 8000))))
    await clock.advance(0.9)
    await piece
    # 2.5 words a second in the first clause: 0.9 s of the second is two words of it
    assert playout.heard_text() == "one two three four five six seven"
    playout.growing = False  # the response is done: the clause is whole, and was all sent
    assert playout.heard_text(playout.sent_samples).split()[-1] == "fifteen"
