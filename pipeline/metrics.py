"""Per-turn timings: the clock times a turn reaches each milestone, reported in ms after the end
of the caller's speech, and the framework's own share of the wait."""

from __future__ import annotations

from dataclasses import dataclass, field

REPORTED = (
    "speech_end",
    "turn_end",
    "asr_done",
    "llm_first_token",
    "first_clause",
    "tts_first_audio",
    "first_audio_sent",
)
"""The milestones every metrics event carries (None when a turn did not reach one).
``first_clause``: the reply's first piece of text is complete and goes to the synthesizer."""

# Each pair: (a stage could start here, it did start here). The time between them belongs to the
# framework (queues, threads, scheduling), not to a model and not to a turn-taking policy.
_HANDOFFS = (
    ("asr_could_start", "asr_start"),
    ("asr_ready", "judge_start"),  # the LLM's end-of-turn judgement, when there is one
    ("judge_ready", "llm_start"),
    ("first_clause", "tts_start"),
    ("audio_ready", "first_audio_sent"),
)


@dataclass(slots=True)
class Marks:
    """Clock times of one turn's milestones (None until reached)."""

    values: dict[str, float | None] = field(default_factory=dict)

    def set_once(self, name: str, at: float | None) -> None:
        if self.values.get(name) is None:
            self.values[name] = at

    def get(self, name: str) -> float | None:
        return self.values.get(name)


def report(marks: Marks) -> dict[str, float | None]:
    """The metrics event's ``metrics_ms``: milestones after the speech end, and ``overhead``."""
    values = marks.values
    origin = values.get("speech_end") or values.get("requested") or values.get("turn_end")
    out: dict[str, float | None] = {}
    for name in REPORTED:
        at = values.get(name)
        out[name] = None if at is None or origin is None else round((at - origin) * 1000.0, 1)
    out["overhead"] = overhead_ms(marks)
    return out


def overhead_ms(marks: Marks) -> float | None:
    """Framework time on the critical path: the sum of the hand-off gaps between stages."""
    values = dict(marks.values)
    values["asr_could_start"] = values.get("paused") or values.get("turn_end")
    asr_done, turn_end = values.get("asr_done"), values.get("turn_end")
    # the LLM may start once the transcript exists and (unless speculating) the turn has ended
    if asr_done is not None:
        values["asr_ready"] = (
            asr_done if values.get("speculative") else max(asr_done, turn_end or 0)
        )
        judged = values.get("judge_done")
        values["judge_ready"] = values["asr_ready"]
        if judged is not None and values.get("judge_start") is not None:
            values["judge_ready"] = (
                judged if values.get("speculative") else max(judged, turn_end or 0)
            )
    # audio may leave once it exists and (when speculating) the turn has been confirmed
    if values.get("tts_first_audio") is not None:
        values["audio_ready"] = max(values["tts_first_audio"] or 0, values.get("released") or 0)
    total = 0.0
    for ready, started in _HANDOFFS:
        a, b = values.get(ready), values.get(started)
        if a is not None and b is not None:
            total += max(0.0, b - a)
    return round(total * 1000.0, 1) if values.get("first_audio_sent") is not None else None
