"""Turn-taking on audio time: 32 ms windows, scores in, events out."""

from pipeline.turns import TurnDetector, TurnEvent, TurnEventKind, TurnSettings

W = 0.032
K = TurnEventKind


def run(detector: TurnDetector, pattern: list[tuple[float, float]]) -> list[tuple[K, float]]:
    """Feed (probability, seconds) runs; return (kind, window end time) per event."""
    events: list[tuple[K, float]] = []
    t = 0.0
    for probability, seconds in pattern:
        for _ in range(round(seconds / W)):
            t = round(t + W, 6)
            events += [(e.kind, t) for e in detector.feed(probability, t, W)]
    return events


def kinds(events: list[tuple[K, float]]) -> list[K]:
    return [k for k, _ in events if k not in (K.ONSET, K.NOISE)]


def test_a_turn_starts_after_min_speech_and_ends_after_the_silence() -> None:
    d = TurnDetector(
        TurnSettings(min_speech_ms=96, silence_duration_ms=500, tentative_silence_ms=160)
    )
    events = run(d, [(0.0, 10 * W), (0.9, 31 * W), (0.0, 25 * W)])
    assert [k for k, _ in events] == [
        K.ONSET,
        K.SPEECH_STARTED,
        K.INTERRUPT,
        K.PAUSED,
        K.TURN_ENDED,
    ]
    onset, started, interrupt, paused, ended = (t for _, t in events)
    assert onset == round(11 * W, 6)  # the very first speech window
    assert started == round(13 * W, 6)  # the third speech window confirms (96 ms)
    assert interrupt == round(16 * W, 6)  # 192 ms of speech
    assert paused == round(46 * W, 6)  # 160 ms of silence after the speech ended at 41 W
    assert ended == round(57 * W, 6)  # 512 ms >= 500 ms of silence


def test_event_times_carry_the_speech_onset_and_end() -> None:
    d = TurnDetector(TurnSettings())
    got: list[TurnEvent] = []
    t = 0.0
    for probability, n in [(0.0, 5), (0.9, 20), (0.0, 20)]:
        for _ in range(n):
            t += W
            got += d.feed(probability, t, W)
    assert abs(got[0].at - 5 * W) < 1e-9  # onset = start of the first speech window
    assert abs(got[-1].at - 25 * W) < 1e-9  # speech end = start of the first silent window
    assert not d.speaking


def test_a_click_is_not_speech() -> None:
    d = TurnDetector(TurnSettings(min_speech_ms=96))
    assert [k for k, _ in run(d, [(0.9, 0.064), (0.0, 1.0)])] == [K.ONSET, K.NOISE]


def test_a_short_pause_resumes_the_same_turn() -> None:
    d = TurnDetector(TurnSettings(silence_duration_ms=500, tentative_silence_ms=160))
    events = run(d, [(0.9, 0.5), (0.0, 0.3), (0.9, 0.5), (0.0, 0.6)])
    assert kinds(events) == [
        K.SPEECH_STARTED,
        K.INTERRUPT,
        K.PAUSED,
        K.RESUMED,
        K.PAUSED,
        K.TURN_ENDED,
    ]


def test_hysteresis_keeps_a_soft_syllable_inside_the_turn() -> None:
    d = TurnDetector(TurnSettings(threshold=0.5, hysteresis=0.15))
    events = run(d, [(0.9, 0.3), (0.4, 0.6), (0.0, 0.6)])  # 0.4 >= 0.35 stays speech
    assert kinds(events)[-1] is K.TURN_ENDED
    assert events[-1][1] > 0.9 + 0.5


def test_interrupt_needs_its_own_minimum() -> None:
    d = TurnDetector(TurnSettings(min_speech_ms=96, interrupt_min_speech_ms=400))
    assert kinds(run(d, [(0.9, 0.3), (0.0, 0.6)])) == [K.SPEECH_STARTED, K.PAUSED, K.TURN_ENDED]


def test_a_semantic_silence_target_can_end_the_turn_at_once_or_hold_it() -> None:
    d = TurnDetector(TurnSettings(silence_duration_ms=500, tentative_silence_ms=160))
    t = 0.0

    def feed(probability: float, windows: int) -> list[TurnEvent]:
        nonlocal t
        events: list[TurnEvent] = []
        for _ in range(windows):
            t += W
            events += d.feed(probability, t, W)
        return events

    feed(0.9, 16)  # 512 ms of speech
    feed(0.0, 10)  # 320 ms into a pause
    assert d.set_silence_target(1000) == []
    assert feed(0.0, 10) == []  # 640 ms: 500 ms would have ended it, the target holds it open
    assert d.speaking
    (ended,) = d.set_silence_target(250)  # the words say the turn is over: it ends now
    assert ended.kind is K.TURN_ENDED and abs(ended.at - 16 * W) < 1e-9
    assert not d.speaking
    assert d.set_silence_target(250) == []  # outside a pause it does nothing
