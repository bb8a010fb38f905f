import pytest

from pipeline.endpointing import EndpointSettings, longest_silence, silence_needed

S = EndpointSettings(complete_ms=250, statement_ms=600, incomplete_ms=1100)


@pytest.mark.parametrize(
    ("words", "ms"),
    [
        ("What is the capital of France?", 250),
        ("Stop!", 250),
        ("How many legs does a spider have?", 250),  # a question, whatever its last word
        ("I live in Paris.", 600),
        ("I would like to book a table for", 1100),
        ("I would like to book a table for.", 1100),  # Whisper's period after a trailing word
        ("and then, um", 1100),
        ("Well,", 1100),
        ("So I was thinking...", 1100),
        ("Tell me about the weather", 1100),
        ("", 1100),
    ],
)
def test_silence_needed(words: str, ms: int) -> None:
    assert silence_needed(words, S) == ms


@pytest.mark.parametrize(
    ("words", "completion", "ms"),
    [
        ("Can you tell me?", 0.00002, 600),  # a question the model expects to go on
        ("Who painted the Mona Lisa?", 0.29, 250),
        ("Tell me how to make a cup of green tea.", 0.44, 250),  # a finished request
        ("I would like to book a table.", 0.0013, 600),
        ("I am planning a trip to Italy.", 0.0026, 600),  # never longer than a statement
        ("I would like to book a table for", 0.9, 1100),  # trailing words win
        ("Tell me about the weather", 0.9, 1100),  # no punctuation: not finished
        ("Stop!", None, 250),  # unknown: words only
    ],
)
def test_a_language_models_judgement_moves_the_silence(
    words: str, completion: float | None, ms: int
) -> None:
    assert silence_needed(words, S, completion) == ms


@pytest.mark.parametrize(
    ("words", "ms"),
    [
        ("Can you tell me?", 600),  # a question: the judge can only shorten it
        ("Stop!", 600),
        ("I live in Paris.", 600),
        ("I would like to book a table for.", 1100),  # trailing: the words alone decide
        ("Tell me about the weather", 1100),
        ("", 1100),
    ],
)
def test_the_longest_pause_the_judge_could_ask_for(words: str, ms: int) -> None:
    assert longest_silence(words, S) == ms
    judged = [silence_needed(words, S, c) for c in (None, 0.0, 0.005, 0.01, 0.1, 0.2, 0.9, 1.0)]
    assert max(judged) == ms


def test_the_longest_pause_follows_the_settings() -> None:
    eager = EndpointSettings(complete_ms=100, statement_ms=300, incomplete_ms=500)
    assert longest_silence("Is it far?", eager) == 300
    never_unlikely = EndpointSettings(unlikely_complete=0.0)  # a question always ends quickly
    assert longest_silence("Is it far?", never_unlikely) == never_unlikely.complete_ms
