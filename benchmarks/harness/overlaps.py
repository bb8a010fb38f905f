"""Speech over the agent: backchannels that should not stop it, interruptions that should.

``voice bench --overlaps`` runs :data:`OVERLAP_SCENARIOS` instead of the default set: each turn
asks for a reply of a few sentences and, once it is audible, says either a backchannel ("Okay.",
"Uh-huh.", a laugh) or an interruption ("Wait, stop.", "No, I meant …"), in several espeak-ng
voices. ``stats.overlap_summary`` reports, over the turns whose reply was playing:

- ``backchannel_interrupted_rate``: backchannels that cut the reply short (goal <= 5%);
- ``interruption_stopped_rate``: interruptions that did (goal >= 95%);
- ``stop_ms``: from the interruption's first audible chunk sent to the last chunk of the reply
  received (goal p95 <= 150 ms).

"Cut short" is the reply's ``response.done`` saying ``cancelled`` (Realtime), or a ``clear`` from
the server (Twilio: a reply only held while the caller spoke gets none).
"""

from __future__ import annotations

from .scenarios import BargeIn, Scenario, Segment, TurnScript

_ASK = (
    "Tell me about the history of Rome in three sentences.",
    "Describe a walk on the beach in three sentences.",
    "Explain how bread is made, step by step.",
    "Tell me a story about a clever fox.",
    "Describe your perfect weekend in three sentences.",
)
_BACKCHANNELS = ("Okay.", "Uh-huh.", "Right.", "I see.", "Yeah.", "Ha ha ha.", "Mm-hmm.")
_INTERRUPTIONS = (
    "Wait, stop.",
    "No, I meant the other one.",
    "Stop.",
    "Hold on.",
    "Sorry, what about tomorrow?",
    "Wait, can you repeat that?",
    "No, no, that is wrong.",
)
_VOICES = ("en-us+m3", "en-us+f3", "en+m7", "en-gb+f4")


def _turns(voice_index: int) -> tuple[TurnScript, ...]:
    """Backchannels and interruptions alternating, each over a fresh reply."""
    turns = []
    for i in range(len(_BACKCHANNELS)):
        k = (i + voice_index) % len(_BACKCHANNELS)
        ask = _ASK[(i + voice_index) % len(_ASK)]
        after = 700 + 150 * ((i + voice_index) % 3)
        backchannel = BargeIn(after, _BACKCHANNELS[k], backchannel=True)
        turns.append(TurnScript(f"bc{i + 1}", (Segment(ask),), backchannel))
        turns.append(TurnScript(f"int{i + 1}", (Segment(ask),), BargeIn(after, _INTERRUPTIONS[k])))
    return tuple(turns)


OVERLAP_SCENARIOS: tuple[Scenario, ...] = tuple(
    Scenario(f"overlaps-{voice}-{half + 1}", voice, _turns(i)[half * 7 : half * 7 + 7])
    for half in range(2)
    for i, voice in enumerate(_VOICES)
)
"""Eight calls of 7 turns (56: 28 backchannels, 28 interruptions), every voice in the first four,
so ``--turns 28`` already hears them all."""
