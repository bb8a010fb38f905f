"""The conversation of one session: its items, and the chat messages the LLM sees.

Items are what the caller and the agent said (as text, plus the duration of audio where there
was audio). The assistant's items hold only what was actually heard after a barge-in.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass(slots=True)
class Item:
    """One item of the conversation: a ``message`` (``role`` user, assistant or system, its
    ``text``), a ``function_call`` the assistant made (``call_id``, ``name``, ``arguments``)
    or a ``function_call_output`` (``call_id``, the output as ``text``)."""

    id: str
    role: str  # "user" | "assistant" | "system"; "assistant" for function calls, "tool" outputs
    text: str = ""
    audio: bool = False
    """True when the content is audio (with ``text`` as its transcript)."""
    status: str = "completed"  # "in_progress" | "completed" | "incomplete"
    audio_ms: int = 0
    type: str = "message"  # "message" | "function_call" | "function_call_output"
    call_id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the assistant made: its id, the function's name, and its arguments as
    JSON text (an object)."""

    call_id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ChatMessage:
    """One message of the prompt. ``role`` is ``system``, ``user``, ``assistant`` or ``tool``.
    An assistant message may carry ``tool_calls`` (with or without words before them); a
    ``tool`` message holds a call's output as ``content`` and that call's ``tool_call_id``,
    and follows the assistant message that made the call."""

    role: str
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str = ""


@dataclass
class Conversation:
    """Ordered items, at most ``max_items`` (the oldest go first). The LLM engine fits them
    into its context window, counted in its own tokens (``context_fit.py``)."""

    instructions: str
    max_items: int = 1000
    items: list[Item] = field(default_factory=list)

    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert after ``previous_item_id`` (default: at the end); returns the previous id."""
        if previous_item_id is None:
            prev = self.last_id()
            self.items.append(item)
        else:
            index = self.index(previous_item_id) + 1
            self.items.insert(index, item)
            prev = previous_item_id
        del self.items[: max(0, len(self.items) - self.max_items)]
        return prev

    def index(self, item_id: str) -> int:
        for i, item in enumerate(self.items):
            if item.id == item_id:
                return i
        raise KeyError(item_id)

    def get(self, item_id: str) -> Item | None:
        for item in self.items:
            if item.id == item_id:
                return item
        return None

    def delete(self, item_id: str) -> None:
        self.items.pop(self.index(item_id))

    def messages(
        self, instructions: str | None = None, items: list[Item] | None = None
    ) -> list[ChatMessage]:
        """System prompt + every finished item (of ``items``, default the conversation's) as
        chat messages; the engine drops what does not fit. A function call appears only once
        its output is there (chat APIs refuse a call without one), on the assistant message
        it followed; its output follows it."""
        return [
            ChatMessage("system", instructions if instructions is not None else self.instructions),
            *history_messages(self.items if items is None else items),
        ]

    def transcript(self) -> list[dict[str, str]]:
        return [_transcript_entry(i) for i in self.items]


def history_messages(items: list[Item]) -> list[ChatMessage]:
    answered = {i.call_id for i in items if i.type == "function_call_output"}
    called = {i.call_id for i in items if i.type == "function_call" and i.status == "completed"}
    history: list[ChatMessage] = []
    for item in items:
        if item.status == "in_progress":
            continue
        if item.type == "function_call":
            if item.call_id not in answered or item.status != "completed":
                continue
            call = ToolCall(item.call_id, item.name, item.arguments)
            last = history[-1] if history else None
            if last is not None and last.role == "assistant":
                last.tool_calls.append(call)
            else:
                history.append(ChatMessage("assistant", "", tool_calls=[call]))
        elif item.type == "function_call_output":
            if item.call_id in called:
                history.append(ChatMessage("tool", item.text, tool_call_id=item.call_id))
        elif item.text.strip():
            history.append(ChatMessage(item.role, item.text.strip()))
    while history and history[0].role in ("assistant", "tool"):
        history.pop(0)  # chat templates expect the user to speak first
    return history


def _transcript_entry(item: Item) -> dict[str, str]:
    entry = {"role": item.role, "text": item.text, "status": item.status}
    if item.type != "message":
        entry |= {"type": item.type, "call_id": item.call_id}
        if item.type == "function_call":
            entry |= {"name": item.name, "arguments": item.arguments}
    return entry
