"""A client's own ``conversation.item.truncate`` of a relayed reply reaches the upstream (named by
the upstream's item id), so the upstream's context is what the client heard: the front is this
server with the ``openai-realtime`` engine, the upstream this server too (fake engines), both on
loopback, the client a Realtime WebSocket client."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline import messages as m
from pipeline.context import Item
from pipeline.session import Session
from voice.server import VoiceServer

from .fakes import fake_engines
from .handoff_peers import WITHIN, peer_server, speech
from .realtime_client import Caller


class Truncations:
    """The ``audio_end_ms`` of each truncation the upstream's session makes (an observer)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.seen: list[int] = []
        self._changed = asyncio.Event()
        session.observers.append(self._observe)

    def _observe(self, session: Session, event: m.SessionEvent) -> None:
        if isinstance(event, m.ItemTruncated):
            self.seen.append(event.audio_end_ms)
            self._changed.set()

    async def until(self, audio_end_ms: int) -> Item:
        """The upstream's assistant item once cut to ``audio_end_ms``."""
        async with asyncio.timeout(WITHIN):
            while audio_end_ms not in self.seen:
                self._changed.clear()
                await self._changed.wait()
        (item,) = [i for i in self.session.conversation.items if i.role == "assistant"]
        return item


def _upstream(peer: VoiceServer) -> Truncations:
    (session,) = peer.sessions.values()
    return Truncations(session)


async def _truncate(caller: Caller, item_id: str, audio_end_ms: int) -> dict[str, Any]:
    await caller.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": audio_end_ms,
        }
    )
    (done,) = await caller.wait_for(
        lambda: caller.of("conversation.item.truncated"), WITHIN, "the truncation"
    )
    return done  # type: ignore[no-any-return]


async def test_a_finished_reply_truncated_by_the_client_is_cut_upstream() -> None:
    reply = " ".join(["word"] * 12)  # 12 words of 100 ms: 1.2 s of audio
    async with peer_server(fake_engines(["hello"], [reply], 100)) as peer:
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        settings = {"handoff.engine": "openai-realtime", "handoff.openai_url": url}
        async with (
            peer_server(fake_engines(["never"], ["Never."]), **settings) as front,
            Caller(front.port) as caller,  # type: ignore[arg-type]
        ):
            caller.say(speech(0.8)[: int(0.8 * 24_000)])
            (done,) = await caller.wait_for(caller.response_done, WITHIN, "the reply")
            assert done["response"]["status"] == "completed"
            upstream = _upstream(peer)
            (before,) = [i for i in upstream.session.conversation.items if i.role == "assistant"]
            assert before.status == "completed"
            item_id = done["response"]["output"][0]["id"]
            truncated = await _truncate(caller, item_id, 500)
            assert truncated["item_id"] == item_id and truncated["audio_end_ms"] == 500
            cut = await upstream.until(500)
            roles = [i.role for i in upstream.session.conversation.items]
    assert upstream.seen == [500]
    assert cut.status == "incomplete" and cut.audio_ms == 500
    assert 0 < len(cut.text.split()) < 12
    assert roles == ["user", "assistant"]


async def test_a_reply_truncated_while_playing_is_cut_where_the_client_says() -> None:
    story = " ".join(["word"] * 60)  # six seconds of reply
    async with peer_server(fake_engines(["tell me a story"], [story], 100)) as peer:
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        settings = {"handoff.engine": "openai-realtime", "handoff.openai_url": url}
        async with (
            peer_server(fake_engines(["never"], ["Never."]), **settings) as front,
            Caller(front.port) as caller,  # type: ignore[arg-type]
        ):
            caller.say(speech(0.8)[: int(0.8 * 24_000)])
            (added,) = await caller.wait_for(
                lambda: caller.of("response.output_item.added"), WITHIN, "the reply"
            )
            item_id, response_id = added["item"]["id"], added["response_id"]
            await caller.wait_for(
                lambda: len(caller.audio_of(response_id)) >= 24_000, WITHIN, "1 s of the reply"
            )
            upstream = _upstream(peer)
            await _truncate(caller, item_id, 300)
            (done,) = await caller.wait_for(caller.response_done, WITHIN, "the reply's end")
            cut = await upstream.until(300)
    assert done["response"]["status"] == "cancelled"
    # the client heard 300 ms (less than was played out): the upstream keeps exactly that, and
    # its last word on the item is the client's
    assert upstream.seen[-1] == 300
    assert cut.status == "incomplete" and cut.audio_ms == 300
    assert 0 < len(cut.text.split()) <= 4
