"""Backchannels: is what the caller said over the agent a "mm-hmm", or do they want the floor?

A pure decision, no I/O. The listener holds the agent's voice at the caller's first speech window
and asks :func:`classify` once it knows the words of the overlap (transcribed at the caller's
first pause) and how long they spoke:

- speech longer than ``max_ms`` interrupts without waiting for the words (a backchannel is short);
- more than ``max_words`` words, a question (the recognizer wrote "?"), or any word of the
  interruption vocabulary ("stop", "wait", "no", "hold" …) interrupts;
- no words at all (a cough, a laugh, a breath: the recognizer wrote nothing, or only a
  ``[laughter]``-style annotation) is a backchannel, and so are words all of the backchannel
  vocabulary ("mm-hmm", "yeah", "right", "okay", "I see" …);
- otherwise up to ``unknown_max_words`` other words are a backchannel (a short sound the
  recognizer misheard: "mm-hmm" heard as "and anthem"), more interrupt.

A backchannel of words resumes the held reply once the caller has been quiet for
``resume_silence_ms`` (speech again before that — "Thanks, … that is enough" — is the same
overlap, judged again on all its words, the agent still held); one without words (a cough, a
laugh) at once. Either way it stays out of the conversation.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

DEFAULT_WORDS = (
    "mm hmm mhm mm hm hmm uh huh um uhm ah oh aha ha haha hahaha heh hehe wow yeah yes yep yup"
    " ya right okay ok k alright all sure cool great nice good fine true exactly indeed gotcha"
    " got it see i makes sense thanks thank you"
)
"""The words a backchannel is made of (an utterance is one when all its words are here)."""
DEFAULT_STOP_WORDS = (
    "stop wait no nope hold hang on sorry excuse pardon actually but hey listen enough quiet"
    " shut pause what why how which who where when"
)
"""Words that make an utterance an interruption, however short."""

_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|♪")
_WORD = re.compile(r"[a-z']+")


class Overlap(enum.Enum):
    BACKCHANNEL = "backchannel"
    INTERRUPTION = "interruption"


@dataclass(slots=True)
class BackchannelSettings:
    """How speech over the agent is judged (``Tuning.backchannel``)."""

    enabled: bool = True
    """Decide from the words whether speech over the agent interrupts it. Off: any speech that
    lasts ``interrupt_min_speech_ms`` cancels the reply (the words are not awaited)."""
    max_ms: int = 1200
    """Speech over the agent longer than this interrupts at once, whatever its words."""
    max_words: int = 3
    """A backchannel has at most this many words."""
    unknown_max_words: int = 2
    """Up to this many words outside both vocabularies still make a backchannel (0: none)."""
    resume_silence_ms: int = 400
    """A backchannel of words resumes the agent once the caller has been silent this long;
    speech again before that continues the overlap (its words are judged again, all of them)."""
    words: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_WORDS.split()))
    """The backchannel vocabulary, lower case."""
    stop_words: frozenset[str] = field(
        default_factory=lambda: frozenset(DEFAULT_STOP_WORDS.split())
    )
    """The interruption vocabulary, lower case."""

    def validate(self) -> None:
        if self.max_ms <= 0:
            raise ValueError("backchannel_max_ms must be > 0")
        if not 0 <= self.resume_silence_ms <= 5000:
            raise ValueError("backchannel_resume_silence_ms must be within 0-5000")
        if self.max_words < 0 or self.unknown_max_words < 0:
            raise ValueError("backchannel_max_words and backchannel_unknown_max_words must be >= 0")


def words_of(text: str) -> list[str]:
    """The spoken words of a transcript: annotations (``[laughter]``, ``(coughs)``) dropped,
    lower case, hyphens split ("mm-hmm" is "mm", "hmm")."""
    text = _ANNOTATION.sub(" ", text.lower()).replace("-", " ")
    return _WORD.findall(text)


def classify(text: str, speech_ms: float, settings: BackchannelSettings) -> Overlap:
    """Whether ``text``, said over the agent in ``speech_ms`` of speech, is a backchannel."""
    if speech_ms > settings.max_ms or "?" in text:
        return Overlap.INTERRUPTION
    words = [word.strip("'") for word in words_of(text)]
    if len(words) > settings.max_words or any(w in settings.stop_words for w in words):
        return Overlap.INTERRUPTION
    unknown = [word for word in words if word not in settings.words]
    if len(unknown) <= settings.unknown_max_words:
        return Overlap.BACKCHANNEL
    return Overlap.INTERRUPTION


def parse_words(text: str) -> frozenset[str]:
    """A configured vocabulary ("yeah, okay, mm-hmm") as the set :func:`classify` compares to."""
    return frozenset(words_of(text.replace(",", " ")))
