import pytest

from pipeline.endpointing import EndpointSettings, silence_needed

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
