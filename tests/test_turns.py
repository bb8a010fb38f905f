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


def run_loud(
    detector: TurnDetector, pattern: list[tuple[float, float, int]]
) -> list[tuple[K, float, float]]:
    """Feed (probability, level dBFS, windows) runs; return (kind, window end, event time)."""
    events: list[tuple[K, float, float]] = []
    t = 0.0
    for probability, level, n in pattern:
        for _ in range(n):
            t = round(t + W, 6)
            events += [(e.kind, t, round(e.at, 6)) for e in detector.feed(probability, t, W, level)]
    return [e for e in events if e[0] not in (K.ONSET, K.NOISE, K.INTERRUPT)]


def test_the_loudness_finds_a_pause_before_the_vad_does_and_the_turn_still_ends_on_the_vad() -> (
    None
):
    """Speech to 30 W, then quiet; the VAD's probability stays up for 3 more windows (its own
    tail). With early_pause_db the pause is sent after 3 quiet windows (96 ms) from the first
    quiet one; the turn ends 500 ms after the VAD's silence began."""
    speech, tail, quiet = (0.9, -20.0, 30), (0.8, -80.0, 3), (0.0, -80.0, 20)
    settings = TurnSettings(tentative_silence_ms=96, silence_duration_ms=500)
    vad_only = run_loud(TurnDetector(settings), [speech, tail, quiet])
    loud = run_loud(TurnDetector(settings, early_pause_db=35), [speech, tail, quiet])
    assert [k for k, *_ in vad_only] == [K.SPEECH_STARTED, K.PAUSED, K.TURN_ENDED]
    assert [k for k, *_ in loud] == [K.SPEECH_STARTED, K.PAUSED, K.TURN_ENDED]
    assert vad_only[1][1:] == (round(36 * W, 6), round(33 * W, 6))  # sent at 36 W, speech end 33 W
    assert loud[1][1:] == (round(33 * W, 6), round(30 * W, 6))  # 3 windows sooner, end 30 W
    # the turn ends when it did (500 ms of the VAD's silence), its speech end where the pause began
    assert vad_only[2][1:] == (round(49 * W, 6), round(33 * W, 6))
    assert loud[2][1:] == (round(49 * W, 6), round(30 * W, 6))


def test_with_silence_from_loudness_the_pause_is_timed_from_the_last_sound() -> None:
    """The sound falls at 30 W, the VAD's probability 3 windows later: the 500 ms that end the
    turn count from 30 W (ended at 46 W, not 49 W), or from at most the cap before the VAD's."""
    speech, tail, quiet = (0.9, -20.0, 30), (0.8, -80.0, 3), (0.0, -80.0, 20)
    settings = TurnSettings(tentative_silence_ms=96, silence_duration_ms=500)

    def ended(**kw: int) -> tuple[float, float]:
        d = TurnDetector(settings, early_pause_db=35, **kw)
        (end,) = [e[1:] for e in run_loud(d, [speech, tail, quiet]) if e[0] is K.TURN_ENDED]
        return end

    assert ended() == (round(49 * W, 6), round(30 * W, 6))  # from the VAD's silence (33 W)
    assert ended(silence_from_loudness_ms=150) == (round(46 * W, 6), round(30 * W, 6))
    assert ended(silence_from_loudness_ms=64) == (round(47 * W, 6), round(30 * W, 6))  # 31 W
    # without the loudness (early_pause_db 0) the setting changes nothing
    d = TurnDetector(settings, silence_from_loudness_ms=150)
    assert [e[1] for e in run_loud(d, [speech, tail, quiet]) if e[0] is K.TURN_ENDED] == [
        round(49 * W, 6)
    ]


def test_a_quiet_stretch_inside_the_words_does_not_move_the_silence() -> None:
    """Quiet windows followed by sound again, then the VAD's pause as the sound stops: the
    silence counts from the VAD's pause."""
    d = TurnDetector(
        TurnSettings(tentative_silence_ms=96, silence_duration_ms=500),
        early_pause_db=35,
        silence_from_loudness_ms=150,
    )
    events = run_loud(d, [(0.9, -20.0, 20), (0.9, -70.0, 2), (0.9, -25.0, 10), (0.0, -90.0, 20)])
    (end,) = [e[1] for e in events if e[0] is K.TURN_ENDED]
    assert end == round(48 * W, 6)  # the VAD's silence from 32 W: 16 windows (512 ms) later


def test_sound_again_takes_the_early_pause_back() -> None:
    d = TurnDetector(TurnSettings(tentative_silence_ms=96), early_pause_db=35)
    events = run_loud(d, [(0.9, -20.0, 20), (0.9, -70.0, 4), (0.9, -25.0, 10), (0.0, -90.0, 20)])
    assert [k for k, *_ in events] == [
        K.SPEECH_STARTED,
        K.PAUSED,  # 96 ms quiet inside the speech (the VAD never paused)
        K.RESUMED,  # the sound is back
        K.PAUSED,  # the real end
        K.TURN_ENDED,
    ]
    assert events[2][1] == round(25 * W, 6)


def test_a_quieter_stretch_within_the_drop_is_speech_and_no_level_means_the_vad_alone() -> None:
    d = TurnDetector(TurnSettings(), early_pause_db=35)
    assert K.PAUSED not in [k for k, *_ in run_loud(d, [(0.9, -20.0, 20), (0.9, -50.0, 10)])]
    d = TurnDetector(TurnSettings(), early_pause_db=35)
    events = []
    t = 0.0
    for p, n in [(0.9, 20), (0.8, 3), (0.0, 3)]:
        for _ in range(n):
            t = round(t + W, 6)
            events += [e.kind for e in d.feed(p, t, W)]  # no level given
    assert events.count(K.PAUSED) == 1 and d.speaking


def test_a_silence_target_set_during_the_early_pause_holds_for_the_vads_pause() -> None:
    """The words are judged during the early pause; the target they set ends the turn once the
    VAD's silence reaches it."""
    d = TurnDetector(
        TurnSettings(silence_duration_ms=2000, tentative_silence_ms=96), early_pause_db=35
    )
    events = run_loud(d, [(0.9, -20.0, 20), (0.8, -80.0, 3)])
    assert [k for k, *_ in events] == [K.SPEECH_STARTED, K.PAUSED]
    assert d.set_silence_target(250) == []  # the VAD still says speech: nothing ends yet
    t, ended = 23 * W, []
    for _ in range(10):
        t = round(t + W, 6)
        ended += [(e.kind, t) for e in d.feed(0.0, t, W, -80.0)]
    assert ended == [(K.TURN_ENDED, round(31 * W, 6))]  # 256 ms after the VAD's silence at 23 W


def test_a_hint_below_the_threshold_comes_a_window_or_more_before_the_onset() -> None:
    """A word's first windows (an "s") score under the threshold: with ``hold_threshold`` the
    first of them sends HINT, and the turn still begins at the threshold."""
    d = TurnDetector(TurnSettings(threshold=0.5), hold_threshold=0.15)
    events = run(d, [(0.0, 5 * W), (0.2, 2 * W), (0.4, W), (0.9, 10 * W)])
    assert [k for k, _ in events][:3] == [K.HINT, K.ONSET, K.SPEECH_STARTED]
    hint, onset = events[0][1], events[1][1]
    assert hint == round(6 * W, 6) and onset == round(9 * W, 6)  # 96 ms sooner
    assert K.NOISE not in [k for k, _ in events]


def test_a_hint_that_falls_back_or_lingers_is_noise_and_does_not_repeat() -> None:
    d = TurnDetector(TurnSettings(threshold=0.5), hold_threshold=0.15, hint_max_ms=96)
    falls = run(d, [(0.0, 2 * W), (0.3, W), (0.0, 3 * W)])
    assert [k for k, _ in falls] == [K.HINT, K.NOISE]
    assert falls[1][1] - falls[0][1] == W  # at the next quiet window
    d = TurnDetector(TurnSettings(threshold=0.5), hold_threshold=0.15, hint_max_ms=96)
    lingers = run(d, [(0.0, 2 * W), (0.3, 20 * W)])  # a hum just under the threshold
    assert [k for k, _ in lingers] == [K.HINT, K.NOISE]  # once, not again every window
    assert round(lingers[1][1] - lingers[0][1], 6) == round(3 * W, 6)  # past 96 ms: no more
    again = run(d, [(0.0, W), (0.3, W)])  # after it falls, a new hint may come
    assert [k for k, _ in again] == [K.HINT]


def test_no_hint_by_default_or_at_or_above_the_threshold() -> None:
    for hold in (0.0, 0.5, 0.7):
        d = TurnDetector(TurnSettings(threshold=0.5), hold_threshold=hold)
        events = run(d, [(0.0, 2 * W), (0.3, 3 * W), (0.0, 3 * W), (0.9, 4 * W)])
        assert K.HINT not in [k for k, _ in events]
