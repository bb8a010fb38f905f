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
    id: str
    role: str  # "user" | "assistant" | "system"
    text: str = ""
    audio: bool = False
    """True when the content is audio (with ``text`` as its transcript)."""
    status: str = "completed"  # "in_progress" | "completed" | "incomplete"
    audio_ms: int = 0


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

    def messages(self, instructions: str | None = None) -> list[ChatMessage]:
        """System prompt + every finished item with text; the engine drops what does not fit."""
        history = [
            ChatMessage(item.role, item.text.strip())
            for item in self.items
            if item.text.strip() and item.status != "in_progress"
        ]
        while history and history[0].role == "assistant":
            history.pop(0)  # chat templates expect the user to speak first
        system = ChatMessage(
            "system", instructions if instructions is not None else self.instructions
        )
        return [system, *history]

    def transcript(self) -> list[dict[str, str]]:
        return [{"role": i.role, "text": i.text, "status": i.status} for i in self.items]
