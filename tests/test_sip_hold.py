"""The agent's voice held at the caller's first speech window (``Session.reply_held``): the
RTP sender stops taking queued audio at once and sends silence, and goes on with the same
frames when released — the caller stops hearing the agent when the hold begins, not a queue's
worth later, and nothing of the reply is lost or reported heard meanwhile. The real
:class:`RtpMedia` on loopback UDP, paced on a virtual clock."""

from __future__ import annotations

import numpy as np
import pytest

from transports import g711

from .test_sip_dtmf_out import HOST, media_to_wire, ticks

pytestmark = [pytest.mark.e2e]


async def test_held_audio_waits_and_silence_goes_out() -> None:
    held = False
    heard: list[tuple[str, int]] = []
    async with media_to_wire() as (media, wire, clock):
        media.held = lambda: held
        media.on_sent = heard.append
        await media.open(HOST)
        await wire.reach(1)  # the first tick, at once: silence
        reply = np.concatenate([np.full(160, 1000 * (k + 1), np.int16) for k in range(4)])
        media.play(reply[:320], ("item_1", 40))
        await ticks(media, wire, clock, 1)  # the first 20 ms of the reply is heard
        held = True  # the caller starts speaking
        media.play(reply[320:], ("item_1", 80))
        await ticks(media, wire, clock, 5)
        assert media.queued_ms == 60 and heard == []  # waiting, nothing more reported heard
        held = False  # it was a cough: the reply goes on where it stopped
        await ticks(media, wire, clock, 4)

    levels = [int(np.abs(g711.ulaw_decode(p.payload)).max()) for p in wire.packets[1:11]]
    assert [round(v, -3) for v in levels] == [1000, 0, 0, 0, 0, 0, 2000, 3000, 4000, 0]
    assert heard == [("item_1", 40), ("item_1", 80)]
