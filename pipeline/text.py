"""Cutting streamed LLM text into speakable pieces.

:class:`ClauseSplitter` takes text deltas as they stream and hands out clauses as soon as a
boundary is certain: sentence ends always, clause punctuation (``, ; :``) once the piece is long
enough to sound natural. :func:`speakable` strips what a TTS voice should not read (markdown,
emoji, URLs' punctuation noise).
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|\n+")
_CLAUSE_END = re.compile("[,;:\u2014\u2013]+(?=\\s)")
_ABBREVIATIONS = frozenset(
    {"mr.", "mrs.", "ms.", "dr.", "prof.", "sr.", "jr.", "st.", "vs.", "etc.", "e.g.", "i.e."}
)
_MARKDOWN = re.compile(r"[*_#`~>|]+")
_NON_SPEECH = re.compile(r"[^\w\s.,;:!?'\"()%$€£&/+=@-]", re.UNICODE)
_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"\S+")


def speakable(text: str) -> str:
    """Text with markdown marks and symbols removed, whitespace collapsed."""
    text = _MARKDOWN.sub(" ", text)
    text = _NON_SPEECH.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


class ClauseSplitter:
    """Incremental splitter. ``min_clause_chars`` is the shortest piece cut at a comma; the very
    first piece of a reply uses ``first_clause_chars`` so speech can start sooner, and with
    ``first_clause_words`` it is cut after that many words even without punctuation (the word
    boundary is certain once the next word has begun)."""

    def __init__(
        self,
        *,
        min_clause_chars: int = 40,
        first_clause_chars: int = 16,
        first_clause_words: int = 0,
    ) -> None:
        self.min_clause_chars = min_clause_chars
        self.first_clause_chars = first_clause_chars
        self.first_clause_words = first_clause_words
        self._pending = ""
        self._emitted = 0

    def feed(self, delta: str) -> list[str]:
        """Add a text delta; return the pieces now complete (possibly none)."""
        self._pending += delta
        pieces: list[str] = []
        while (cut := self._next_cut()) is not None:
            piece, self._pending = self._pending[:cut], self._pending[cut:]
            self._add(piece, pieces)
        return pieces

    def flush(self) -> list[str]:
        """End of stream: whatever is left is the last piece."""
        pieces: list[str] = []
        self._add(self._pending, pieces)
        self._pending = ""
        return pieces

    def take_words(self, *, min_chars: int = 12, run_chars: int = 24) -> list[str]:
        """The listener is about to hear silence (the model is slower than speech, or it is
        writing a run with no boundary, "100000…"): the complete words pending go now, if
        they make at least ``min_chars``; a run of ``run_chars`` or more with no space at all
        goes as it is. Nothing when neither holds."""
        text = self._pending
        last = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
        if len(text[: last + 1].strip()) >= min_chars:
            cut = last + 1
        elif len(text) - (last + 1) >= run_chars:
            cut = len(text)
        else:
            return []
        pieces: list[str] = []
        self._add(text[:cut], pieces)
        self._pending = text[cut:]
        return pieces

    def _add(self, piece: str, pieces: list[str]) -> None:
        if speakable(piece):
            pieces.append(piece.strip())
            self._emitted += 1

    def _next_cut(self) -> int | None:
        text = self._pending
        for match in _SENTENCE_END.finditer(text):
            words = text[: match.end()].split()
            if words and words[-1].lower() in _ABBREVIATIONS:
                continue
            if speakable(text[: match.end()]):
                return match.end()
        limit = self.first_clause_chars if self._emitted == 0 else self.min_clause_chars
        for match in _CLAUSE_END.finditer(text):
            if len(text[: match.end()].strip()) >= limit:
                return match.end()
        if self._emitted > 0:
            return None
        cut = None
        if self.first_clause_words > 0:
            cut = self._word_cut(text, self.first_clause_words) or self._long_word_cut(text)
        return cut if cut is not None else self._overlong_cut(text)

    def _overlong_cut(self, text: str) -> int | None:
        """A first piece with no boundary at all past ``2 * min_clause_chars`` (80 at the
        least: a run of digits or symbols, a script written without spaces): cut at its last
        space, else right there. (A reply read aloud is paced after its first tokens: a first
        piece waiting for the end of such a run waited for the whole reply, 12 s.)"""
        limit = max(80, 2 * self.min_clause_chars)
        if len(text) < limit:
            return None
        space = text.rfind(" ", 0, limit)
        return space if space > 0 and text[:space].strip() else limit

    def _long_word_cut(self, text: str) -> int | None:
        """A first piece past ``min_clause_chars`` whose next word has not ended ("A spider has
        1000000…", a word that may run on for seconds): the words before it go now."""
        spans = [m.end() for m in _WORD.finditer(text)]
        if len(text.strip()) >= self.min_clause_chars and len(spans) > 1:
            return spans[-2]
        return None

    @staticmethod
    def _word_cut(text: str, words: int) -> int | None:
        """End of the ``words``-th word, once a later word has started (so it is complete)."""
        spans = [m.end() for m in _WORD.finditer(text)]
        if len(spans) > words:
            return spans[words - 1]
        return None
