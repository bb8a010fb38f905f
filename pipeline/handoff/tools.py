"""The hand-off as a tool the model may call (``voice serve --tools pipeline.handoff.tools``):
the conversation goes on with another engine from the reply after the call."""

from __future__ import annotations

from typing import Annotated

from ..tools.registry import ToolContext, tool


@tool(on_barge_in="finish", timeout_s=1.0)
async def hand_off(
    context: ToolContext,
    engine: Annotated[str, "Who answers from now on: cascade, openai-realtime or gemini-live"],
) -> str:
    """Hand the conversation to another voice engine (when the caller asks for it)."""
    context.switch_engine(engine)
    return f"From now on {engine} answers; the conversation goes on."
