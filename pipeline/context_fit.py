"""Fitting a chat prompt into the model's context window, counted in the model's own tokens.

Pure logic: the caller gives the messages (system first), a token counter for one text and the
budget (the context less the reply's ``max_tokens`` and a margin); :func:`fit_messages` returns
the messages to send. What is kept:

- the system prompt; if it alone takes more than half the budget it is cut, keeping its start;
- the newest message, always; if it cannot fit even alone it is cut to what remains, keeping its
  *end* (for a caller's long message the last words are what was said last, the question
  usually, and what the end-of-turn judge reads);
- older messages, newest first, while they fit; then leading assistant messages are dropped,
  since chat templates expect the history to start with a user message;
- a function call and its outputs (an assistant message with ``tool_calls`` and the ``tool``
  messages after it) stay together: the history never starts with a ``tool`` message (the
  outputs of a dropped call are dropped too), except when the newest message is an output,
  which is then kept with its call. A call's name and arguments are counted with its message.

Keeping the prompt's prefix stable: llama.cpp (and vLLM or llama.cpp's server with a prefix
cache) re-uses the evaluated prefix of the previous prompt. A window that slid by one turn each
turn would change the prefix every turn and re-evaluate the whole prompt. So when history must
be dropped, it is dropped down to ``refill`` (70 %) of the budget and the new first message (the
*head*) is remembered in a :class:`HeadMemory`; later calls start at the newest remembered head
whose suffix still fits, so the prefix stays the same turn after turn until it no longer fits.
A head is remembered by a hash of the whole conversation up to and including it, so a memory
shared by every session of an engine never mixes two conversations that merely repeat a
sentence. Whoever fits the same messages against the same memory gets the same prompt (the
end-of-turn judge and the reply that follows it).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .context import ChatMessage

Counter = Callable[[str], int]
"""The number of tokens of one text, in the model's tokenizer (or an upper bound of it)."""

_MAX_CUT_STEPS = 16


@dataclass(slots=True)
class Overhead:
    """Template tokens around the texts: per message (role markers, end of message) and once
    per prompt (BOS, the assistant's generation prompt)."""

    per_message: int = 8
    per_prompt: int = 8


class HeadMemory:
    """The conversation prefixes at which history was cut, most recently used last; at most
    ``limit`` (one engine's memory serves every session, so it is bounded)."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def remember(self, key: bytes) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)


def fit_messages(
    messages: Sequence[ChatMessage],
    budget: int,
    count: Counter,
    *,
    overhead: Overhead | None = None,
    memory: HeadMemory | None = None,
    refill: float = 0.7,
) -> list[ChatMessage]:
    """The messages to send so that their estimated tokens (texts + ``overhead``) are at most
    ``budget``. ``messages[0]`` is the system prompt when its role is ``system``."""
    over = overhead or Overhead()
    system, history = _split(messages)
    room = budget - over.per_prompt
    if system is not None:
        limit = room // 2 - over.per_message
        system = replace(system, content=cut_text(system.content, limit, count, keep_end=False))
        room -= count(system.content) + over.per_message
    head = [system] if system is not None else []
    if not history:
        return head
    newest = history[-1]
    cut = cut_text(newest.content, room - over.per_message, count, keep_end=True)
    if cut != newest.content:
        history = [*history[:-1], replace(newest, content=cut)]
    start = _start(
        history, room, lambda m: count(message_text(m)) + over.per_message, memory, refill
    )
    return [*head, *history[start:]]


def message_text(message: ChatMessage) -> str:
    """The text of a message that costs tokens: its content and its calls' names and
    arguments."""
    if not message.tool_calls:
        return message.content
    calls = "".join(f"{call.name}{call.arguments}" for call in message.tool_calls)
    return message.content + calls


def cut_text(text: str, limit: int, count: Counter, *, keep_end: bool) -> str:
    """``text``, or its end (``keep_end``) or start cut by characters to at most ``limit``
    tokens; the cut is proportional to the excess, then re-counted, so it takes a few counts."""
    tokens = count(text)
    if tokens <= limit:
        return text
    piece = text
    for _ in range(_MAX_CUT_STEPS):
        if limit <= 0:
            break
        length = min(len(piece) - 1, len(piece) * limit // max(tokens, 1))
        if length <= 0:
            break
        piece = piece[-length:] if keep_end else piece[:length]
        tokens = count(piece)
        if tokens <= limit:
            return piece
    return ""


def _split(messages: Sequence[ChatMessage]) -> tuple[ChatMessage | None, list[ChatMessage]]:
    if messages and messages[0].role == "system":
        return messages[0], list(messages[1:])
    return None, list(messages)


def _start(
    history: list[ChatMessage],
    room: int,
    cost: Callable[[ChatMessage], int],
    memory: HeadMemory | None,
    refill: float,
) -> int:
    """Index of the first history message to keep (the newest is always kept)."""
    totals = _suffix_costs(history, room, cost)
    fits_from = len(history) - _kept(totals, room)
    keys = _prefix_keys(history) if memory is not None else []
    if memory is not None:
        for i in range(len(history) - 1, _unit_start(history, fits_from) - 1, -1):
            if keys[i] in memory:  # the newest cut of this conversation that still fits
                memory.remember(keys[i])
                return _skip_assistants(history, i)
    if fits_from == 0:
        return _skip_assistants(history, 0)
    start = _skip_assistants(
        history, _unit_start(history, len(history) - _kept(totals, int(room * refill)))
    )
    if memory is not None and start < len(history):
        memory.remember(keys[start])
    return start


def _suffix_costs(
    history: list[ChatMessage], room: int, cost: Callable[[ChatMessage], int]
) -> list[int]:
    """``[0, cost(last), cost(last two), …]``, up to the first total over ``room``, so only
    the messages that might fit are counted."""
    totals = [0]
    for message in reversed(history):
        totals.append(totals[-1] + cost(message))
        if totals[-1] > room:
            break
    return totals


def _kept(totals: list[int], limit: int) -> int:
    """How many of the newest messages fit ``limit`` (at least one: the newest is kept)."""
    kept = 1
    while kept + 1 < len(totals) and totals[kept + 1] <= limit:
        kept += 1
    return kept


def _prefix_keys(history: list[ChatMessage]) -> list[bytes]:
    """For each message, a hash of the history up to and including it."""
    keys, digest = [], b""
    for message in history:
        h = hashlib.blake2b(digest, digest_size=16)
        h.update(message.role.encode())
        h.update(b"\0")
        h.update(message.content.encode())
        for call in message.tool_calls:
            h.update(f"\0{call.call_id}\0{call.name}\0{call.arguments}".encode())
        h.update(message.tool_call_id.encode())
        digest = h.digest()
        keys.append(digest)
    return keys


def _unit_start(history: list[ChatMessage], start: int) -> int:
    """``start``, or if it is a call's output, the next message that is not (the outputs go
    with their dropped call), or if none is, the call (the newest output is kept with it)."""
    after = start
    while after < len(history) and history[after].role == "tool":
        after += 1
    if after < len(history) or start == after:
        return after
    while start > 0 and history[start].role == "tool":
        start -= 1
    return start


def _skip_assistants(history: list[ChatMessage], start: int) -> int:
    """Past leading assistant messages and the outputs of their calls, unless the newest
    message is such an output (then its call stays)."""
    skipped = start
    while skipped < len(history) and history[skipped].role in ("assistant", "tool"):
        skipped += 1
    if skipped == len(history) and history and history[-1].role == "tool":
        return _unit_start(history, len(history) - 1)
    return skipped
