"""What the synthetic callers say.

A *scenario* is one call (one connection): a list of caller turns. A *turn* is one or more speech
segments separated by scripted pauses (a mid-sentence pause), optionally followed by a barge-in:
once the agent's reply is audible, wait ``after_ms``, then speak the interruption.

The default set is spoken at run time by espeak-ng in voices other than the agent's Piper voice.
``--scenario FILE`` reads a JSON file instead::

    {"scenarios": [
      {"name": "booking", "voice": "en-us+f3", "turns": [
        {"segments": [{"wav": "table.wav", "text": "I would like to book a table", "pause_ms": 500},
                      {"wav": "two.wav", "text": "for two people tonight."}]},
        {"segments": [{"text": "Tell me a long story."}],
         "barge_in": {"after_ms": 800, "wav": "stop.wav", "text": "Stop, please."}},
        {"segments": [{"text": "Tell me about Rome."}],
         "barge_in": {"after_ms": 900, "text": "Mm-hmm.", "backchannel": true}}
      ]}
    ]}

``wav`` paths are relative to the file (16-bit PCM, any rate, resampled to the protocol's);
a segment without ``wav`` is spoken by espeak-ng (``voice``: the segment's, else the scenario's);
``text`` is the reference for the word error rate; a ``barge_in`` with ``"backchannel": true``
only acknowledges (the agent should go on: ``overlaps.py`` counts it when it does not). A
top-level list is read as the scenarios.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .audio import CACHE_DIR, DEFAULT_WPM, espeak, load_speech


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    pause_ms: int = 0
    """Silence after this segment, before the next one (ignored after the last)."""
    wav: str | None = None
    voice: str | None = None


@dataclass(frozen=True, slots=True)
class BargeIn:
    after_ms: int
    text: str
    wav: str | None = None
    voice: str | None = None
    backchannel: bool = False
    """Said over the agent only to acknowledge ("mm-hmm"): the agent should go on."""


@dataclass(frozen=True, slots=True)
class TurnScript:
    name: str
    segments: tuple[Segment, ...]
    barge_in: BargeIn | None = None

    @property
    def kind(self) -> str:
        if self.barge_in is not None:
            return "backchannel" if self.barge_in.backchannel else "barge-in"
        return "pause" if len(self.segments) > 1 else "simple"

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments)

    @property
    def pauses_ms(self) -> list[int]:
        return [s.pause_ms for s in self.segments[:-1]]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    voice: str
    turns: tuple[TurnScript, ...]
    base_dir: Path | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "voice": self.voice,
            "turns": [
                {
                    "name": t.name,
                    "kind": t.kind,
                    "text": t.text,
                    "pauses_ms": t.pauses_ms,
                    "barge_in": None
                    if t.barge_in is None
                    else {
                        "after_ms": t.barge_in.after_ms,
                        "text": t.barge_in.text,
                        "backchannel": t.barge_in.backchannel,
                    },
                }
                for t in self.turns
            ],
        }


def _simple(name: str, text: str) -> TurnScript:
    return TurnScript(name, (Segment(text),))


def _paused(name: str, first: str, second: str, pause_ms: int = 500) -> TurnScript:
    return TurnScript(name, (Segment(first, pause_ms), Segment(second)))


def _barge(name: str, text: str, after_ms: int, interruption: str) -> TurnScript:
    return TurnScript(name, (Segment(text),), BargeIn(after_ms, interruption))


# Kinds are interleaved so that the first few turns (--turns 3 or 4) already cover all of them.
DEFAULT_SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "errands",
        "en-us+m3",
        (
            _simple("capital", "What is the capital of France?"),
            _paused("booking", "I would like to book a table", "for two people tonight."),
            _barge(
                "dragon-story",
                "Please tell me a long story about a brave little dragon.",
                700,
                "Stop, wait a moment, I have a question.",
            ),
        ),
    ),
    Scenario(
        "curious",
        "en-us+f3",
        (
            _simple("spider", "How many legs does a spider have?"),
            _paused("museum", "Can you tell me", "what time the museum usually opens?"),
            _barge(
                "favourite-city",
                "Describe your favourite city in a few sentences.",
                1000,
                "Sorry to interrupt, is it far from here?",
            ),
        ),
    ),
    Scenario(
        "planning",
        "en+m7",
        (
            _simple("sky", "Why is the sky blue?"),
            _paused(
                "italy", "I am planning a trip to Italy", "and I need advice about the weather."
            ),
            _simple("planet", "Which planet is closest to the sun?"),
            _paused("pet", "My daughter wants a pet", "should we get a cat or a dog?"),
            _barge(
                "green-tea",
                "Tell me how to make a cup of green tea.",
                500,
                "Thanks, that is enough.",
            ),
        ),
    ),
)


QUESTIONS: tuple[str, ...] = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Can you recommend a good book for the weekend?",
    "Why is the sky blue?",
    "What should I cook for dinner tonight?",
    "Who wrote Romeo and Juliet?",
    "How do I make a cup of green tea?",
    "What is the tallest mountain in the world?",
    "Tell me a fun fact about octopuses.",
    "Is it going to be cold in winter in Canada?",
    "What is a good way to fall asleep faster?",
    "Which planet is closest to the sun?",
)
"""Short questions, one simple turn each: the set of ``realtime_latency`` and ``webrtc_latency``."""
QUESTIONS_VOICE = "en-us+m3"


def questions(count: int, voice: str = QUESTIONS_VOICE) -> Scenario:
    """One call of ``count`` simple turns: :data:`QUESTIONS` in order, cycling."""
    texts = [QUESTIONS[i % len(QUESTIONS)] for i in range(count)]
    turns = tuple(_simple(f"q{i + 1:02d}", text) for i, text in enumerate(texts))
    return Scenario("questions", voice, turns)


def select_turns(
    scenarios: list[Scenario] | tuple[Scenario, ...], turns: int | None
) -> list[Scenario]:
    """The first ``turns`` turns of the set, in order (cycling when more are asked for than exist);
    scenarios cut short keep their first turns. ``None`` keeps everything."""
    scenarios = [s for s in scenarios if s.turns]
    if turns is None:
        return list(scenarios)
    if not scenarios:
        return []
    out: list[Scenario] = []
    left = turns
    for round_, scenario in zip(itertools.count(), itertools.cycle(scenarios)):
        if left <= 0:
            break
        taken = scenario.turns[:left]
        name = (
            scenario.name
            if round_ < len(scenarios)
            else f"{scenario.name}#{round_ // len(scenarios) + 1}"
        )
        out.append(replace(scenario, name=name, turns=taken))
        left -= len(taken)
    return out


# ---------------------------------------------------------------- scenario files


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{where}: expected a number of ms >= 0, got {value!r}")
    return int(value)


def _segment(raw: Any, where: str) -> Segment:
    if isinstance(raw, str):
        return Segment(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object")
    wav, text = raw.get("wav"), raw.get("text", "")
    if not wav and not text:
        raise ValueError(f"{where}: needs a 'wav' or a 'text'")
    return Segment(
        str(text),
        _int(raw.get("pause_ms", 0), f"{where}.pause_ms"),
        wav and str(wav),
        raw.get("voice"),
    )


def _turn(raw: Any, where: str) -> TurnScript:
    if isinstance(raw, str):
        return TurnScript(where, (Segment(raw),))
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object")
    segments = raw.get("segments")
    if segments is None and ("wav" in raw or "text" in raw):
        segments = [raw]
    if not isinstance(segments, list) or not segments:
        raise ValueError(f"{where}: needs a non-empty 'segments' list")
    barge = raw.get("barge_in")
    barge_in = None
    if barge is not None:
        seg = _segment(barge, f"{where}.barge_in")
        barge_in = BargeIn(
            _int(barge.get("after_ms", 500), f"{where}.barge_in.after_ms"),
            seg.text,
            seg.wav,
            seg.voice,
            bool(barge.get("backchannel", False)),
        )
    return TurnScript(
        str(raw.get("name") or where),
        tuple(_segment(s, f"{where}.segments[{i}]") for i, s in enumerate(segments)),
        barge_in,
    )


def parse_scenarios(data: Any, base_dir: Path | None = None) -> list[Scenario]:
    raw = data.get("scenarios") if isinstance(data, dict) else data
    if not isinstance(raw, list) or not raw:
        raise ValueError("a scenario file holds a non-empty list of scenarios")
    out = []
    for i, sc in enumerate(raw):
        where = f"scenarios[{i}]"
        if not isinstance(sc, dict) or not isinstance(sc.get("turns"), list) or not sc["turns"]:
            raise ValueError(f"{where}: needs a non-empty 'turns' list")
        turns = tuple(_turn(t, f"{where}.turns[{j}]") for j, t in enumerate(sc["turns"]))
        out.append(
            Scenario(
                str(sc.get("name") or f"scenario-{i + 1}"),
                str(sc.get("voice") or "en-us+m3"),
                turns,
                base_dir,
            )
        )
    return out


def load_scenario_file(path: Path) -> list[Scenario]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the scenario file {path}: {exc}") from exc
    return parse_scenarios(data, path.resolve().parent)


# ---------------------------------------------------------------- rendering


@dataclass(slots=True)
class RenderedTurn:
    script: TurnScript
    segments: list[np.ndarray]
    barge_in: np.ndarray | None = None
    rate: int = 24_000

    @property
    def speech_s(self) -> float:
        total = sum(len(s) for s in self.segments) + sum(self.script.pauses_ms) * self.rate / 1000
        return total / self.rate


@dataclass(slots=True)
class RenderedScenario:
    scenario: Scenario
    turns: list[RenderedTurn] = field(default_factory=list)


class Renderer:
    """Turns scripts into audio at one rate; espeak-ng output is cached on disk."""

    def __init__(self, rate: int, cache: Path = CACHE_DIR, wpm: int = DEFAULT_WPM) -> None:
        self.rate = rate
        self.cache = cache
        self.wpm = wpm

    def speech(self, text: str, wav: str | None, voice: str, base_dir: Path | None) -> np.ndarray:
        if wav:
            path = Path(wav)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
        else:
            path = espeak(text, voice, self.wpm, self.cache)
        audio = load_speech(path, self.rate)
        if not len(audio):
            raise ValueError(f"no audible speech in {path} ({text!r})")
        return audio

    def render(self, scenario: Scenario) -> RenderedScenario:
        out = RenderedScenario(scenario)
        for turn in scenario.turns:
            segments = [
                self.speech(s.text, s.wav, s.voice or scenario.voice, scenario.base_dir)
                for s in turn.segments
            ]
            barge = None
            if turn.barge_in is not None:
                b = turn.barge_in
                barge = self.speech(b.text, b.wav, b.voice or scenario.voice, scenario.base_dir)
            out.turns.append(RenderedTurn(turn, segments, barge, self.rate))
        return out
