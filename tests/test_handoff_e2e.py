"""The OpenAI Realtime hand-off end to end: the official ``openai`` SDK talks to this server
(the front), whose engine is ``openai-realtime`` pointed at this same server started as a
second process (``python -m voice serve``, the real models) on loopback. A spoken turn, a
barge-in (the upstream's item cut to what the caller heard) and a tool call pass through;
every event the SDK gets is validated strictly against its models."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from voice.server import VoiceServer

from .conftest import espeak
from .conftest import test_config as base_config
from .fakes import fake_engines
from .realtime_client import Caller
from .test_e2e_realtime import words
from .test_e2e_tools import NAMED, WEATHER, function_calls
from .test_engines import wer

pytestmark = [pytest.mark.e2e, pytest.mark.models]
ROOT = Path(__file__).resolve().parent.parent
TURN_TIMEOUT = 120.0
QUESTION = "Who painted the Mona Lisa?"


class Upstream:
    """``voice serve`` in its own process: its URL; once stopped, its sessions' transcripts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = ""
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.log = (self.folder / "server.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voice", "serve", "--port", "0",
            "--set", f"server.transcript_dir={self.folder / 'transcripts'}",
            "--set", f"server.data_dir={self.folder / 'data'}",
            "--set", "sip.enabled=false",
            stdout=asyncio.subprocess.PIPE, stderr=self.log, cwd=ROOT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        async with asyncio.timeout(180):
            line = (await self.proc.stdout.readline()).decode()
            while not line.startswith("READY"):
                assert line, f"the upstream exited: {self.tail()}"
                line = (await self.proc.stdout.readline()).decode()
        self.url = line.split()[2].rstrip("/")

    def tail(self) -> str:
        return (self.folder / "server.log").read_text()[-2000:]

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()  # SIGTERM: it drains, writes every transcript, and exits
            await asyncio.wait_for(self.proc.wait(), 60)
        self.log.close()

    async def transcript(self) -> list[dict[str, str]]:
        """The items of its one session (it is stopped first)."""
        await self.stop()
        (path,) = (self.folder / "transcripts").glob("*.json")
        return json.loads(path.read_text())["items"]  # type: ignore[no-any-return]


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    server = Upstream(tmp_path)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def front(upstream: Upstream) -> AsyncIterator[VoiceServer]:
    """This server, every session handed off to the upstream (its own models are fakes that
    are never asked: the fallback is off)."""
    config = base_config()
    config.handoff.engine = "openai-realtime"
    config.handoff.openai_url = upstream.url
    config.handoff.fallback = False
    config.handoff.first_audio_timeout_s = 60.0
    config.handoff.gap_timeout_s = 30.0
    server = VoiceServer(config, fake_engines(["never"], ["Never."]))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def test_a_spoken_turn_and_a_barge_in_through_the_upstream(
    front: VoiceServer, upstream: Upstream
) -> None:
    async with Caller(front.port) as caller:  # type: ignore[arg-type]
        await caller.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": "You are a storyteller. Tell long stories of many sentences.",
                },
            }
        )
        caller.say(espeak(QUESTION, rate=24_000))
        (done,) = await caller.wait_for(caller.response_done, TURN_TIMEOUT, "the reply")
        heard = caller.of("conversation.item.input_audio_transcription.completed")
        assert wer(QUESTION, heard[0]["transcript"]) <= 0.2, heard
        reply = done["response"]
        # a storyteller may run into the token limit (sampling is random): both are whole replies
        ended = (reply["status"], (reply.get("status_details") or {}).get("reason"))
        assert ended in {("completed", None), ("incomplete", "max_output_tokens")}, reply
        assert reply["output"][0]["content"][0]["transcript"].strip()
        assert len(caller.audio_of(reply["id"])) > 0.5 * 24_000

        caller.say(espeak("Please tell me a long story about a brave little dragon.", rate=24_000))
        created = await caller.wait_for(
            lambda: caller.of("response.created")[1:], TURN_TIMEOUT, "the story"
        )
        story = created[0]["response"]["id"]
        await caller.wait_for(
            lambda: len(caller.audio_of(story)) >= 24_000, TURN_TIMEOUT, "1 s of the story"
        )
        caller.say(espeak("Stop, wait a moment, I have a question.", rate=24_000))
        await caller.wait_for(lambda: caller.response_done(2), 60, "the story to end")
        cut = caller.of("response.done")[1]["response"]
        assert cut["id"] == story and cut["status"] == "cancelled", cut
        assert cut["status_details"]["reason"] == "turn_detected"
        kept = cut["output"][0]["content"][0]["transcript"]
    items = await upstream.transcript()

    # the upstream's copy of the story is cut to what the caller heard, as the front's is
    stories = [i for i in items if i["role"] == "assistant" and i["status"] == "incomplete"]
    assert stories, items
    upstream_kept, front_kept = words(stories[-1]["text"]), words(kept)
    assert front_kept and abs(len(upstream_kept) - len(front_kept)) <= 3, (stories, kept)
    common = min(len(upstream_kept), len(front_kept))
    assert upstream_kept[:common] == front_kept[:common]  # two cuts of the same story
    assert items[0]["role"] == "user" and wer(QUESTION, items[0]["text"]) <= 0.2


async def test_a_tool_call_through_the_upstream(front: VoiceServer, upstream: Upstream) -> None:
    async with Caller(front.port) as caller:  # type: ignore[arg-type]
        await caller.send(
            {"type": "session.update", "session": {"tools": [WEATHER], "tool_choice": NAMED}}
        )
        caller.say(espeak("What is the weather in Paris today?", rate=24_000))
        (done,) = await caller.wait_for(caller.response_done, TURN_TIMEOUT, "the call")
        (call,) = function_calls(done)
        assert isinstance(json.loads(call["arguments"])["city"], str)
        deltas = caller.of("response.function_call_arguments.delta")
        assert "".join(d["delta"] for d in deltas) == call["arguments"]
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
        await caller.send({"type": "conversation.item.create", "item": output})
        await caller.send({"type": "response.create", "response": {"tool_choice": "none"}})
        both = await caller.wait_for(lambda: caller.response_done(2), TURN_TIMEOUT, "the answer")
    answer = both[1]["response"]
    assert answer["status"] == "completed" and not function_calls(both[1])
    assert answer["output"][0]["content"][0]["transcript"].strip()
    items = await upstream.transcript()
    kinds = [(i.get("type", "message"), i["role"]) for i in items]
    assert ("function_call", "assistant") in kinds and ("function_call_output", "tool") in kinds
    (output_item,) = [i for i in items if i.get("type") == "function_call_output"]
    assert output_item["text"] == "sunny" and output_item["call_id"] == call["call_id"]
