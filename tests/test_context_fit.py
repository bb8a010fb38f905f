"""Fitting the prompt into the context window (``pipeline/context_fit.py``), with a fake
tokenizer: one token per character, no template overhead unless a test sets one."""

from __future__ import annotations

from itertools import pairwise

from pipeline.context import ChatMessage, Conversation, Item, ToolCall
from pipeline.context_fit import HeadMemory, Overhead, cut_text, fit_messages, message_text

NONE = Overhead(per_message=0, per_prompt=0)
SYSTEM = ChatMessage("system", "Be brief.")  # 9 tokens


def chars(text: str) -> int:
    return len(text)


def cost(messages: list[ChatMessage], overhead: Overhead = NONE) -> int:
    return overhead.per_prompt + sum(len(m.content) + overhead.per_message for m in messages)


def pairs(n: int, start: int = 0) -> list[ChatMessage]:
    """``n`` user/assistant pairs of 10 tokens each message, all different."""
    out = []
    for i in range(start, start + n):
        out += [ChatMessage("user", f"question{i:02d}"), ChatMessage("assistant", f"answer{i:04d}")]
    return out


def test_everything_that_fits_is_kept() -> None:
    messages = [SYSTEM, *pairs(3), ChatMessage("user", "last")]
    assert fit_messages(messages, 100, chars, overhead=NONE) == messages


def test_over_budget_drops_the_oldest_and_keeps_system_and_newest() -> None:
    messages = [SYSTEM, *pairs(20), ChatMessage("user", "the question")]
    fitted = fit_messages(messages, 100, chars, overhead=NONE)
    assert fitted[0] == SYSTEM
    assert fitted[-1] == messages[-1]
    assert fitted[1:] == messages[len(messages) - len(fitted) + 1 :]  # a suffix, in order
    assert fitted[1].role == "user"
    assert cost(fitted) <= 100
    assert len(fitted) < len(messages)


def test_overhead_counts_per_message_and_per_prompt() -> None:
    messages = [SYSTEM, *pairs(20), ChatMessage("user", "the question")]
    overhead = Overhead(per_message=5, per_prompt=7)
    fitted = fit_messages(messages, 200, chars, overhead=overhead)
    assert cost(fitted, overhead) <= 200
    assert cost(fitted) < 200 - 5 * len(fitted)  # the overhead left room unused for texts


def test_a_message_too_long_alone_is_cut_keeping_its_end() -> None:
    huge = "word " * 400 + "so what is the answer?"
    fitted = fit_messages([SYSTEM, ChatMessage("user", huge)], 100, chars, overhead=NONE)
    assert [m.role for m in fitted] == ["system", "user"]
    assert fitted[0] == SYSTEM
    assert fitted[1].content.endswith("so what is the answer?")
    assert huge.endswith(fitted[1].content)
    assert 50 <= cost(fitted) <= 100  # cut to what remains, not to nothing


def test_emoji_are_cut_by_a_byte_counting_tokenizer_too() -> None:
    def utf8(text: str) -> int:
        return len(text.encode())

    fitted = fit_messages([SYSTEM, ChatMessage("user", "😀" * 700)], 500, utf8, overhead=NONE)
    assert set(fitted[1].content) == {"😀"}
    assert 400 <= sum(utf8(m.content) for m in fitted) <= 500


def test_a_system_prompt_over_half_the_budget_is_cut_keeping_its_start() -> None:
    system = ChatMessage("system", "You are a pirate. " + "Arr. " * 100)
    fitted = fit_messages([system, ChatMessage("user", "Hi")], 100, chars, overhead=NONE)
    assert fitted[0].content.startswith("You are a pirate.")
    assert len(fitted[0].content) <= 50
    assert fitted[1] == ChatMessage("user", "Hi")


def test_history_starts_with_a_user_message() -> None:
    messages = [SYSTEM, *pairs(10), ChatMessage("user", "the question")]
    for budget in range(40, 120, 7):
        fitted = fit_messages(messages, budget, chars, overhead=NONE)
        assert fitted[1].role == "user", budget
    only_assistant = [SYSTEM, ChatMessage("assistant", "Hello there.")]
    assert fit_messages(only_assistant, 100, chars, overhead=NONE) == [SYSTEM]


def test_empty_history_and_no_system() -> None:
    assert fit_messages([SYSTEM], 100, chars) == [SYSTEM]
    assert fit_messages([], 100, chars) == []
    user = [ChatMessage("user", "Hi")]
    assert fit_messages(user, 100, chars) == user


def _heads(memory: HeadMemory | None, turns: int = 30) -> list[str]:
    """The first history message of each turn's prompt as a conversation grows."""
    history: list[ChatMessage] = []
    heads = []
    for turn in range(turns):
        history += [ChatMessage("user", f"question{turn:02d}")]
        fitted = fit_messages([SYSTEM, *history], 200, chars, overhead=NONE, memory=memory)
        assert cost(fitted) <= 200 and fitted[-1] == history[-1]
        heads.append(fitted[1].content)
        history += [ChatMessage("assistant", f"answer{turn:04d}")]
    return heads


def test_the_cut_point_stays_put_for_several_turns() -> None:
    heads = _heads(HeadMemory())
    changes = sum(a != b for a, b in pairwise(heads))
    assert heads[0] == "question00"
    assert changes <= 6, heads  # 30 turns, a cut every ~4 turns
    runs = [heads.count(h) for h in dict.fromkeys(heads)]
    assert min(runs[1:-1]) >= 3, heads  # each cut holds for several turns
    # without the memory the window slides: the prefix changes every turn once full
    sliding = _heads(None)
    assert sum(a != b for a, b in pairwise(sliding)) >= 15


def test_a_repeated_sentence_does_not_make_the_window_slide() -> None:
    """Heads are remembered with the conversation before them, not by their text alone."""
    memory = HeadMemory()
    say = [ChatMessage("user", "Say hello."), ChatMessage("assistant", "Hello! I'm here.")]
    history: list[ChatMessage] = []
    starts = []
    for _ in range(30):
        history += say
        fitted = fit_messages([SYSTEM, *history, say[0]], 200, chars, overhead=NONE, memory=memory)
        starts.append(len(history) + 1 - (len(fitted) - 1))  # index of the head in history
    changes = sum(a != b for a, b in pairwise(starts))
    assert changes <= 8, starts


def test_a_cut_made_by_one_caller_is_adopted_by_another_with_more_room() -> None:
    """The end-of-turn judge and the reply may fit for different budgets; whichever cuts
    first, the other starts at the same message and evaluates the same prompt."""
    memory = HeadMemory()
    messages = [SYSTEM, *pairs(12), ChatMessage("user", "the question")]
    reply = fit_messages(messages, 200, chars, overhead=NONE, memory=memory)
    judge = fit_messages(messages, 280, chars, overhead=NONE, memory=memory)
    assert judge == reply
    fresh = fit_messages(messages, 280, chars, overhead=NONE, memory=HeadMemory())
    assert len(fresh) > len(reply)  # (alone, the larger budget would have kept more)


def test_another_conversation_is_not_cut_by_this_ones_memory() -> None:
    memory = HeadMemory()
    long = [SYSTEM, *pairs(20), ChatMessage("user", "the question")]
    fit_messages(long, 100, chars, overhead=NONE, memory=memory)
    short = [SYSTEM, *pairs(3, start=17), ChatMessage("user", "the question")]
    assert fit_messages(short, 100, chars, overhead=NONE, memory=memory) == short


def test_head_memory_is_bounded_and_least_recently_used_goes_first() -> None:
    memory = HeadMemory(limit=2)
    for key in (b"a", b"b"):
        memory.remember(key)
    memory.remember(b"a")  # used again
    memory.remember(b"c")
    assert len(memory) == 2 and b"a" in memory and b"c" in memory and b"b" not in memory


def test_cut_text() -> None:
    assert cut_text("short", 10, chars, keep_end=True) == "short"
    assert cut_text("0123456789", 4, chars, keep_end=True) == "6789"
    assert cut_text("0123456789", 4, chars, keep_end=False) == "0123"
    assert cut_text("0123456789", 0, chars, keep_end=True) == ""

    def lumpy(text: str) -> int:  # a tokenizer where the count is not proportional
        return len(text) + 3 * text.count("x")

    piece = cut_text("ab" * 20 + "x" * 20, 30, lumpy, keep_end=True)
    assert lumpy(piece) <= 30 and piece.endswith("x")


def test_conversation_gives_every_finished_item_for_the_engine_to_fit() -> None:
    conversation = Conversation("Be brief.")
    conversation.add(Item("a0", "assistant", "Welcome!"))
    for i in range(200):
        conversation.add(Item(f"u{i}", "user", "Say hello in three words." * 4))
        conversation.add(Item(f"a{i}", "assistant", "Hello! I'm a voice assistant with"))
    conversation.add(Item("x", "assistant", "Hel", status="in_progress"))
    messages = conversation.messages()
    assert len(messages) == 1 + 400  # no character budget: the engine counts tokens
    assert messages[0] == ChatMessage("system", "Be brief.")
    assert messages[1].role == "user" and messages[-1].role == "assistant"


def call_turn(i: int, args: str = '{"city": "Paris"}') -> list[ChatMessage]:
    """A question, a call with its output, and the answer."""
    call = ToolCall(f"call_{i}", "get_weather", args)
    return [
        ChatMessage("user", f"weather{i:02d}?"),
        ChatMessage("assistant", "", [call]),
        ChatMessage("tool", f"sunny{i:02d}", tool_call_id=call.call_id),
        ChatMessage("assistant", f"answer{i:04d}"),
    ]


def outputs_have_their_calls(history: list[ChatMessage]) -> bool:
    calls = {c.call_id for m in history for c in m.tool_calls}
    return all(m.tool_call_id in calls for m in history if m.role == "tool")


def test_a_calls_arguments_are_counted() -> None:
    big = call_turn(0, '{"city": "' + "x" * 80 + '"}')
    assert message_text(big[1]) == "get_weather" + big[1].tool_calls[0].arguments
    messages = [SYSTEM, *big, ChatMessage("user", "the question")]
    fitted = fit_messages(messages, 100, chars, overhead=NONE)
    assert sum(len(message_text(m)) for m in fitted) <= 100
    assert fitted == [SYSTEM, ChatMessage("user", "the question")]


def test_a_call_and_its_output_are_kept_or_dropped_together() -> None:
    messages = [SYSTEM, *[m for i in range(8) for m in call_turn(i)], ChatMessage("user", "now?")]
    for budget in range(30, 300, 3):
        for memory in (None, HeadMemory()):
            fitted = fit_messages(messages, budget, chars, overhead=NONE, memory=memory)
            assert fitted[-1] == messages[-1]
            assert fitted[1].role == "user", budget
            assert outputs_have_their_calls(fitted[1:]), budget


def test_the_newest_output_is_kept_with_its_call() -> None:
    """The reply after a function output: too little room for the question, but the call and
    its output stay (the output alone would be an answer to nothing)."""
    turn = call_turn(0)[:3]
    for budget in (20, 40, 60):  # (at 20 only the output fits: the call comes anyway)
        fitted = fit_messages([SYSTEM, *pairs(5), *turn], budget, chars, overhead=NONE)
        assert fitted[-2:] == turn[1:]
        assert outputs_have_their_calls(fitted[1:])
