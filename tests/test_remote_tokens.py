"""Counting tokens with a remote server's tokenize endpoint, through a fake HTTP ``post``."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from pipeline.engines._remote_tokens import HttpPost, RemoteTokenCounter


class Server:
    """Answers like one kind of server: ``kind`` is ``llama-cpp-python``, ``llama.cpp``,
    ``vLLM``, ``none`` (no tokenize endpoint) or ``down`` (refuses connections)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.requests: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self.kind == "down":
            raise ConnectionRefusedError("refused")
        self.requests.append((path, body))
        text = body.get("input") or body.get("content") or body.get("prompt")
        tokens = list(range(len(str(text).split())))  # one token per word
        if self.kind == "llama-cpp-python" and path == "/extras/tokenize":
            return 200, {"tokens": tokens}
        if self.kind == "llama.cpp" and path == "/tokenize" and "content" in body:
            return 200, {"tokens": tokens}
        if self.kind == "vLLM" and path == "/tokenize":
            if "prompt" not in body:
                return 400, {"error": "prompt is required"}
            return 200, {"count": len(tokens), "tokens": tokens}
        return 404, {"detail": "Not Found"}


@pytest.mark.parametrize("kind", ["llama-cpp-python", "llama.cpp", "vLLM"])
async def test_the_servers_tokenizer_is_found_once_and_counts_are_cached(kind: str) -> None:
    server = Server(kind)
    tokens = RemoteTokenCounter(server, "m")
    assert await tokens.count("one two three four") == 4
    assert tokens.cached("one two three four") == 4
    asked = len(server.requests)
    assert await tokens.count("one two three four") == 4  # cached: no call
    assert await tokens.count("five six") == 2  # one call, no new probe
    assert len(server.requests) == asked + 1
    if kind == "vLLM":
        assert server.requests[-1] == ("/tokenize", {"model": "m", "prompt": "five six"})


async def test_without_a_tokenize_endpoint_utf8_bytes_bound_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server("none")
    tokens = RemoteTokenCounter(server, "m")
    with caplog.at_level(logging.INFO, logger="voice.llm"):
        assert await tokens.count("😀 hi") == 7  # 4 + 1 + 2 bytes
        assert await tokens.count("hello") == 5
    assert len(server.requests) == 3  # probed once: each kind of endpoint
    assert sum("no tokenize endpoint" in r.message for r in caplog.records) == 1
    assert tokens.cached("unknown text") == len(b"unknown text")


async def test_an_unreachable_server_is_counted_by_bytes_and_probed_again_later() -> None:
    server = Server("down")
    tokens = RemoteTokenCounter(server, "m")
    assert await tokens.count("one two") == len(b"one two")
    server.kind = "llama-cpp-python"
    assert await tokens.count("one two") == 2


async def test_the_count_cache_is_bounded() -> None:
    tokens = RemoteTokenCounter(Server("llama-cpp-python"), "m", cache=2)
    for text in ("a", "b c", "d e f"):
        await tokens.count(text)
    assert tokens.cached("d e f") == 3 and tokens.cached("b c") == 2
    assert tokens.cached("a") == len(b"a")  # forgotten: the byte bound again


def test_tokenize_paths_are_under_the_servers_root() -> None:
    assert HttpPost("http://h:8000/v1/", "k", 1.0).root == "http://h:8000"
    assert HttpPost("http://h:8000", "k", 1.0).root == "http://h:8000"


def test_a_stream_that_stops_without_finishing_is_an_error() -> None:
    """llama_cpp.server ends the stream silently when it fails mid-reply (e.g. a tool choice it
    cannot stream): that is a failed reply, not an empty completed one."""
    from types import SimpleNamespace

    from pipeline.engines.llm_openai import _Reading
    from pipeline.errors import EngineError

    def chunk(content: str | None, finish: str | None) -> object:
        delta = SimpleNamespace(content=content, tool_calls=None)
        choice = SimpleNamespace(delta=delta, finish_reason=finish)
        return SimpleNamespace(usage=None, choices=[choice])

    reading = _Reading(10)
    assert reading.events(chunk("Hi", None)) == ["Hi"]
    with pytest.raises(EngineError, match="without a finish_reason"):
        reading.end()
    reading.events(chunk(None, "stop"))
    assert reading.end().finish_reason == "stop"
