"""End-of-turn by meaning: how long a pause should last before the turn is over, judged from
the words heard so far (sans-I/O).

A complete question can be answered after a short silence; a sentence that stops on "and", "the"
or a comma is probably not finished, so the turn waits longer. Whisper's punctuation carries the
prosody: it ends a falling statement with a period and a question with a question mark.

Punctuation cannot tell "Can you tell me?" (the caller goes on: "…what time it opens?") from
"Can you help me?". A language model can: ``completion`` is its probability that the words are a
whole message (``TurnJudge``). A request it is sure of ends as soon as a question; a question it
finds unlikely to be finished waits as long as a statement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_TRAILING = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "so",
        "because",
        "if",
        "of",
        "to",
        "for",
        "with",
        "in",
        "on",
        "at",
        "by",
        "from",
        "as",
        "than",
        "that",
        "which",
        "who",
        "whose",
        "where",
        "when",
        "while",
        "is",
        "are",
        "was",
        "were",
        "be",
        "am",
        "my",
        "your",
        "our",
        "their",
        "his",
        "her",
        "its",
        "this",
        "these",
        "those",
        "i",
        "we",
        "you",
        "he",
        "she",
        "they",
        "it",
        "um",
        "uh",
        "er",
        "like",
        "about",
        "into",
        "onto",
        "over",
        "under",
        "very",
        "really",
        "just",
        "also",
        "not",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "do",
        "does",
        "did",
        "have",
        "has",
        "had",
        "going",
        "want",
        "wanted",
    ]
)
_WORDS = re.compile(r"[a-z']+")


@dataclass(slots=True, frozen=True)
class EndpointSettings:
    complete_ms: int = 250
    """Silence that ends a turn whose words sound finished (a question, an exclamation)."""
    statement_ms: int = 600
    """Silence after a plain statement ending in a period."""
    incomplete_ms: int = 1100
    """Silence after words that trail off (a conjunction, an article, a comma, no punctuation)."""
    likely_complete: float = 0.2
    """A ``completion`` at least this high ends a sentence (``.``, ``?``, ``!``) after
    ``complete_ms``."""
    unlikely_complete: float = 0.01
    """A ``completion`` below this makes a question or exclamation wait ``statement_ms``."""


EAGERNESS = {"high": 0.6, "medium": 1.0, "auto": 1.0, "low": 2.0}
"""``semantic_vad``'s eagerness → the factor on every silence of :class:`EndpointSettings`. With
the defaults (250/600/1100 ms): ``high`` 150/360/660, ``medium`` (= ``auto``) 250/600/1100,
``low`` 500/1200/2200 ms for a finished / a plain statement / a trailing sentence. Each stays
under OpenAI's longest wait for that eagerness (2 s, 4 s, 8 s)."""


def for_eagerness(settings: EndpointSettings, eagerness: str) -> EndpointSettings:
    """``settings`` with its silences scaled by ``EAGERNESS[eagerness]``."""
    factor = EAGERNESS[eagerness]
    return replace(
        settings,
        complete_ms=round(settings.complete_ms * factor),
        statement_ms=round(settings.statement_ms * factor),
        incomplete_ms=round(settings.incomplete_ms * factor),
    )


def silence_needed(
    transcript: str, settings: EndpointSettings, completion: float | None = None
) -> int:
    """Milliseconds of silence that should end a turn whose words so far are ``transcript``;
    ``completion``: a language model's probability that they are a whole message, if known."""
    text = transcript.strip()
    if not text:
        return settings.incomplete_ms
    words = _WORDS.findall(text.lower())
    last = words[-1] if words else ""
    if text.endswith(("?", "!")):  # a question, whatever its last word
        if completion is not None and completion < settings.unlikely_complete:
            return settings.statement_ms
        return settings.complete_ms
    if text.endswith(("...", "…", ",", ";", ":", "-")) or last in _TRAILING:
        return settings.incomplete_ms
    if text.endswith("."):
        if completion is not None and completion >= settings.likely_complete:
            return settings.complete_ms
        return settings.statement_ms
    return settings.incomplete_ms


def longest_silence(transcript: str, settings: EndpointSettings) -> int:
    """The longest :func:`silence_needed` can ask for after ``transcript``, whatever the
    judge's ``completion``: the less likely a whole message, the longer the wait, so the
    longest is at 0. A judge still thinking needs no longer a pause than this: a question or a
    sentence waits ``statement_ms`` at most, only words that trail off ``incomplete_ms``."""
    return silence_needed(transcript, settings, 0.0)
