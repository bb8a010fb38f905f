"""Counting tokens in a remote LLM's own tokenizer, through its server's tokenize endpoint.

OpenAI's API has no such endpoint; the usual self-hosted servers do, each in its own shape:

- llama-cpp-python's server: ``POST /extras/tokenize`` ``{"input": text, "model": m}``
  → ``{"tokens": […]}``
- llama.cpp's server: ``POST /tokenize`` ``{"content": text}`` → ``{"tokens": […]}``
- vLLM: ``POST /tokenize`` ``{"model": m, "prompt": text}`` → ``{"count": n, …}``

The first that answers is found once and used from then on; counts are cached per text (a
bounded LRU), so a turn costs one small call for its new message. A server with none of them
(or a failed call) is counted by UTF-8 bytes, an upper bound for byte-level tokenizers: prompts
then keep less history than they could, but never overflow. Every call is bounded by
``timeout``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger("voice.llm")

Post = Callable[[str, dict[str, Any]], Awaitable[tuple[int, Any]]]
"""POST a JSON body to a path under the server's root; its status and JSON answer (``None`` if
not JSON). Raises ``OSError`` or ``TimeoutError`` when the server cannot be reached."""


@dataclass(frozen=True, slots=True)
class _Dialect:
    name: str
    path: str
    body: Callable[[str, str], dict[str, Any]]


_DIALECTS = (
    _Dialect(
        "llama-cpp-python", "/extras/tokenize", lambda text, model: {"input": text, "model": model}
    ),
    _Dialect("llama.cpp", "/tokenize", lambda text, model: {"content": text}),
    _Dialect("vLLM", "/tokenize", lambda text, model: {"model": model, "prompt": text}),
)
_UNREACHABLE = (OSError, TimeoutError, aiohttp.ClientError)


class _NotAnswered(Exception):
    """The server answered, but not with a token count."""


def byte_bound(text: str) -> int:
    """An upper bound on the tokens of ``text``: each token covers at least one byte."""
    return len(text.encode())


class HttpPost:
    """:data:`Post` over aiohttp, every call bounded by ``timeout``."""

    def __init__(self, base_url: str, api_key: str, timeout: float) -> None:
        self.root = base_url.rstrip("/").removesuffix("/v1")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self._session is None:  # (made on first use, inside the event loop)
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        async with self._session.post(self.root + path, json=body) as response:
            try:
                data = await response.json(content_type=None)
            except ValueError:
                data = None
            return response.status, data

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class RemoteTokenCounter:
    def __init__(self, post: Post, model: str, *, cache: int = 4096) -> None:
        self.model = model
        self.cache_size = cache
        self._post = post
        self._dialect: _Dialect | None = None
        self._probed = False
        self._counts: OrderedDict[str, int] = OrderedDict()

    def cached(self, text: str) -> int:
        """The count of ``text`` if known, else its byte bound (no I/O)."""
        count = self._counts.get(text)
        return byte_bound(text) if count is None else count

    async def count(self, text: str) -> int:
        """Tokens of ``text``; cancel-safe (nothing is cached unless the call finished)."""
        if text in self._counts:
            self._counts.move_to_end(text)
            return self._counts[text]
        if not self._probed:
            await self._probe()
        if self._dialect is None:
            return byte_bound(text)
        try:
            count = await self._ask(self._dialect, text)
        except (*_UNREACHABLE, _NotAnswered) as exc:
            log.warning("tokenize call failed (%r): counting UTF-8 bytes for this text", exc)
            return byte_bound(text)
        self._counts[text] = count
        while len(self._counts) > self.cache_size:
            self._counts.popitem(last=False)
        return count

    async def _probe(self) -> None:
        for dialect in _DIALECTS:
            try:
                await self._ask(dialect, "Hello")
            except _UNREACHABLE as exc:
                log.warning("LLM endpoint unreachable for tokenizing (%r): will ask again", exc)
                return  # down or slow: bytes for now, the next count probes again
            except _NotAnswered:
                continue
            self._dialect, self._probed = dialect, True
            log.info("LLM endpoint: counting tokens with its %s tokenize endpoint", dialect.name)
            return
        self._probed = True
        log.warning(
            "LLM endpoint has no tokenize endpoint: counting UTF-8 bytes (an upper bound),"
            " so prompts keep less history than the context could hold"
        )

    async def _ask(self, dialect: _Dialect, text: str) -> int:
        status, data = await self._post(dialect.path, dialect.body(text, self.model))
        if status != 200 or not isinstance(data, dict):
            raise _NotAnswered(f"{dialect.path}: HTTP {status}")
        count = data["count"] if "count" in data else len(data.get("tokens") or [])
        if not isinstance(count, int) or (count <= 0 and bool(text)):
            raise _NotAnswered(f"{dialect.path}: no token count in {data!r:.200}")
        return count
