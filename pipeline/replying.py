"""A reply's lifecycle, in one object: :class:`ReplyHandle`.

::

    PREPARING ─adopt()─▶ SPEAKING ─finish()─▶ DONE (completed | incomplete | cancelled | failed)
        │                                        ▲
        └────────────────finish()────────────────┘  (a speculation dropped: no trace)

A *preparing* reply is speculative: it generates and synthesizes silently, outside the
conversation, while the caller's turn is still being confirmed. :meth:`ReplyHandle.adopt` makes
it the conversation's and lets it be heard. :meth:`ReplyHandle.cancel` is the one way to stop a
reply, whatever its state: it silences the playout at once (no frame leaves after the decision)
and cancels the task; the first reason given is the one reported. Illegal transitions raise.
"""

from __future__ import annotations

import asyncio
import enum

from .context import Item
from .messages import ResponseInfo
from .reply import Reply


class ReplyState(enum.Enum):
    PREPARING = "preparing"
    SPEAKING = "speaking"
    DONE = "done"


_ALLOWED = {
    ReplyState.PREPARING: {ReplyState.SPEAKING, ReplyState.DONE},
    ReplyState.SPEAKING: {ReplyState.DONE},
    ReplyState.DONE: set(),
}


class ReplyHandle:
    """One response: its id, its assistant item, the :class:`Reply` doing the work and the task
    running it."""

    def __init__(
        self, response_id: str, item: Item, reply: Reply, info: ResponseInfo | None = None
    ) -> None:
        self.response_id = response_id
        self.item = item
        self.reply = reply
        self.info = info or ResponseInfo()
        self.calls: dict[int, Item] = {}
        """The reply's ``function_call`` items, by the LLM's call index."""
        self.state = ReplyState.PREPARING
        self.adopted = False
        """Whether it was ever the conversation's (so its end is announced)."""
        self.cancel_reason: str | None = None
        self.deleted = False
        """The client deleted the item while it was being spoken: nothing may name it again."""
        self.task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.state is ReplyState.DONE

    @property
    def out_of_band(self) -> bool:
        return self.info.out_of_band

    def adopt(self) -> None:
        """The reply becomes the conversation's and is heard."""
        self._move(ReplyState.SPEAKING)
        self.adopted = True
        self.reply.release()

    def cancel(self, reason: str) -> None:
        """Stop the reply now (idempotent; the first reason wins). Safe in any state."""
        if self.state is ReplyState.DONE:
            return
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self.reply.interrupt()
        if self.task is not None:
            self.task.cancel()

    def finish(self) -> None:
        """Called once by the task running the reply, however it ended."""
        self._move(ReplyState.DONE)

    def _move(self, new: ReplyState) -> None:
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"reply {self.response_id}: {self.state.value} -> {new.value}")
        self.state = new
