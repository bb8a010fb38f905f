import pytest

from pipeline.text import ClauseSplitter, speakable


def feed_all(splitter: ClauseSplitter, text: str, step: int = 3) -> list[str]:
    pieces: list[str] = []
    for i in range(0, len(text), step):
        pieces += splitter.feed(text[i : i + step])
    return pieces + splitter.flush()


def test_sentences_are_cut_as_soon_as_they_end() -> None:
    splitter = ClauseSplitter()
    assert splitter.feed("Paris is the capital") == []
    assert splitter.feed(" of France. It is") == ["Paris is the capital of France."]
    assert splitter.flush() == ["It is"]


def test_first_piece_is_cut_at_a_comma_once_long_enough() -> None:
    splitter = ClauseSplitter(first_clause_chars=10, min_clause_chars=40)
    pieces = feed_all(splitter, "Well, to be honest with you, the answer is four, more or less.")
    assert pieces == ["Well, to be honest with you,", "the answer is four, more or less."]


def test_the_first_piece_can_be_cut_after_a_few_words() -> None:
    splitter = ClauseSplitter(first_clause_words=4)
    assert splitter.feed("The capital of France") == []  # "France" may still be growing
    assert splitter.feed(" is Paris and it is lovely") == ["The capital of France"]
    assert splitter.feed(" in spring, they say") == []  # later pieces wait for punctuation
    assert splitter.flush() == ["is Paris and it is lovely in spring, they say"]


def test_a_first_piece_is_not_held_by_a_word_that_runs_on() -> None:
    """A small model may write a 100-digit number: the words before it are said at once,
    not after the number (which the LLM may pace) has ended."""
    splitter = ClauseSplitter(first_clause_words=4, min_clause_chars=40)
    assert splitter.feed("A spider has 1000") == []  # short yet: the number may end soon
    assert splitter.feed("0" * 30) == ["A spider has"]
    assert splitter.feed("0" * 30 + "1.") == []
    assert splitter.flush() == ["1" + "0" * 63 + "1."]


def test_abbreviations_and_decimals_do_not_end_a_sentence() -> None:
    pieces = feed_all(ClauseSplitter(), "Dr. Smith measured 3.5 litres. Then he left.")
    assert pieces == ["Dr. Smith measured 3.5 litres.", "Then he left."]


def test_text_is_reassembled_without_loss() -> None:
    text = "One, two; three: four. Five! Six? Seven\nEight, nine, ten."
    pieces = feed_all(ClauseSplitter(first_clause_chars=1, min_clause_chars=1), text, step=1)
    assert " ".join(pieces).split() == text.split()


def test_leading_newlines_and_blank_pieces_are_skipped() -> None:
    assert feed_all(ClauseSplitter(), "\n\nHello there.\n\n  \nBye.", step=1) == [
        "Hello there.",
        "Bye.",
    ]


def test_markdown_and_symbols_are_not_spoken() -> None:
    assert speakable("**Bold** and `code` # heading 🙂") == "Bold and code heading"
    assert feed_all(ClauseSplitter(), "*** ") == []


def test_leading_silence_is_trimmed_to_2_ms_before_the_first_sound() -> None:
    import numpy as np

    from pipeline.audio import trim_leading_silence

    rate = 22_050
    quiet = (np.sin(np.arange(rate // 20)) * 60).astype(np.int16)  # 50 ms of near-silence
    sound = (np.cos(np.arange(rate // 10) / 5) * 8000).astype(np.int16)  # loud from its start
    trimmed = trim_leading_silence(np.concatenate([quiet, sound]), rate)
    assert len(trimmed) == len(sound) + 2 * rate // 1000
    assert np.array_equal(trimmed[-len(sound) :], sound)
    assert np.array_equal(trim_leading_silence(quiet, rate), quiet)  # nothing audible: unchanged


@pytest.mark.parametrize("words", [0, 3])
def test_a_first_piece_without_any_boundary_goes_out_after_twice_the_clause_length(
    words: int,
) -> None:
    splitter = ClauseSplitter(min_clause_chars=40, first_clause_words=words)
    assert splitter.feed("1" * 79) == []
    (first,) = splitter.feed("1" * 30)  # one "word" of digits, no space, no punctuation
    assert first == "1" * 80
    splitter = ClauseSplitter(min_clause_chars=40, first_clause_words=words)
    pieces = splitter.feed("Hi " + "数" * 90)  # a script written without spaces
    assert pieces == ["Hi"]  # cut at its last space
    assert splitter.flush() == ["数" * 90]
