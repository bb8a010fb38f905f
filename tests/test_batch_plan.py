"""The batched LLM's plan (``_batch_plan.py``): slots, cache re-use, steps, cancellation."""

from __future__ import annotations

import pytest

from pipeline.engines._batch_plan import (
    FOLLOW,
    MIN_SHIFT,
    STALE,
    Copy,
    Entry,
    Job,
    Planner,
    Remove,
    Shift,
)

SYSTEM = [1, 2, 3, 4]


def run_step(plan: Planner) -> list[Entry]:
    """One step as the worker does it: decode, then sample a token for each reply whose
    logits are read (the token is 100 + the position, to tell them apart)."""
    entries = plan.step()
    plan.evaluated(entries)
    for entry in entries:
        job = entry.job
        if entry.logits and job.budget > 0 and entry.pos >= len(job.prompt) - 1:
            plan.sampled(job, 100 + entry.pos)
    return entries


def test_a_new_prompt_is_evaluated_beside_the_replies_in_progress() -> None:
    plan = Planner(slots=2, chunk=64)
    first = Job([*SYSTEM, 10, 11], budget=50)
    plan.add(first)
    plan.assign()
    run_step(plan)  # first's prompt; its first token is sampled
    run_step(plan)
    second = Job([*SYSTEM, 20], budget=50)
    plan.add(second)
    plan.assign()
    entries = run_step(plan)
    # one step: first's next token and second's prompt past the system prompt (shared)
    assert [(e.job, e.pos) for e in entries if e.job is first] == [(first, 7)]
    assert [(e.token, e.pos, e.logits) for e in entries if e.job is second] == [(20, 4, True)]
    assert second.next_token == 104  # its first token came out of that step


def test_prompt_tokens_per_step_are_bounded_and_oldest_first() -> None:
    plan = Planner(slots=3, chunk=5)
    old, new = Job(list(range(1, 9)), budget=4), Job(list(range(50, 54)), budget=4)
    plan.add(old)
    plan.add(new)
    plan.assign()
    entries = run_step(plan)
    assert [e.token for e in entries] == [1, 2, 3, 4, 5]
    entries = run_step(plan)
    assert [(e.job is old, e.token) for e in entries] == [
        (True, 6),
        (True, 7),
        (True, 8),
        (False, 50),
        (False, 51),
    ]
    assert old.next_token is not None and new.next_token is None


def test_a_finished_job_leaves_its_cache_for_the_next_turn() -> None:
    plan = Planner(slots=2)
    turn = Job([*SYSTEM, 10], budget=2)
    plan.add(turn)
    plan.assign()
    run_step(plan)
    run_step(plan)
    plan.finish(turn)
    assert plan.cached(0) == [*SYSTEM, 10, 104]
    nxt = Job([*SYSTEM, 10, 104, 30, 31], budget=2)
    plan.add(nxt)
    ops = plan.assign()
    assert nxt.slot == 0 and ops == [Remove(0, 6)]  # nothing to drop, all re-used
    assert [e.token for e in plan.step()] == [30, 31]


def test_a_shorter_prompt_cuts_the_cache_where_it_differs() -> None:
    plan = Planner(slots=1)
    turn = Job([*SYSTEM, 10, 11, 12], budget=1)
    plan.add(turn)
    plan.assign()
    run_step(plan)
    plan.finish(turn)
    again = Job([*SYSTEM, 10, 99], budget=1)
    plan.add(again)
    assert plan.assign() == [Remove(0, 5)]
    assert plan.cached(0) == [*SYSTEM, 10]
    assert [e.token for e in plan.step()] == [99]


def test_the_same_prompt_evaluates_its_last_token_again_for_its_logits() -> None:
    plan = Planner(slots=1)
    judge = Job([*SYSTEM, 10], wanted=frozenset({3, 4}))
    plan.add(judge)
    plan.assign()
    run_step(plan)
    plan.finish(judge)
    reply = Job([*SYSTEM, 10], budget=3)
    plan.add(reply)
    assert plan.assign() == [Remove(0, 4)]
    entries = plan.step()
    assert [(e.token, e.pos, e.logits) for e in entries] == [(10, 4, True)]
    rescore = Job([*SYSTEM, 10], wanted=frozenset({2, 4}))
    plan.evaluated(entries)
    plan.finish(reply)
    plan.add(rescore)
    plan.assign()
    assert [(e.pos, e.logits) for e in plan.step()] == [(2, True), (3, False), (4, True)]


def test_a_prefix_cached_in_another_busy_slot_is_shared_not_evaluated() -> None:
    plan = Planner(slots=2)
    first = Job([*SYSTEM, 10], budget=9)
    plan.add(first)
    plan.assign()
    run_step(plan)
    second = Job([*SYSTEM, 20, 21], budget=9)
    plan.add(second)
    ops = plan.assign()
    assert second.slot == 1
    assert ops == [Remove(1, 0), Copy(0, 1, 4)]
    assert plan.cached(1) == SYSTEM
    assert [e.token for e in plan.step() if e.job is second] == [20, 21]


def finished(plan: Planner, tokens: list[int]) -> Job:
    """A one-token reply to ``tokens``, run to its end: its slot keeps the prompt (the reply's
    token is never evaluated)."""
    job = Job(tokens, budget=1)
    plan.add(job)
    plan.assign()
    run_step(plan)
    plan.finish(job)
    return job


def test_the_idle_slot_with_the_longest_prefix_is_chosen_else_the_least_costly() -> None:
    plan = Planner(slots=3)
    for tokens in ([7, 7, 7], [*SYSTEM, 10], [8, 8]):
        finished(plan, tokens)
    back = Job([*SYSTEM, 10, 104, 40], budget=1)
    plan.add(back)
    plan.assign()
    assert back.slot == 1
    plan.drop(back)
    stranger = Job([55, 56], budget=1)
    plan.add(stranger)
    plan.assign()
    assert stranger.slot == 2  # nothing shared, nothing free: the least cached is given up


def test_a_new_conversation_copies_the_shared_system_prompt_into_a_free_slot() -> None:
    """It shares the system prompt with every cached conversation: it must not take one of
    their slots (that caller's next turn would evaluate its conversation again)."""
    plan = Planner(slots=3)
    finished(plan, [*SYSTEM, 10, 11])
    other = Job([*SYSTEM, 20], budget=1)
    plan.add(other)
    assert plan.assign() == [Remove(1, 0), Copy(0, 1, 4)]
    assert other.slot == 1 and plan.cached(0) == [*SYSTEM, 10, 11]
    run_step(plan)
    plan.finish(other)
    back = Job([*SYSTEM, 10, 11, 12, 13], budget=1)  # the first caller's next turn
    plan.add(back)
    plan.assign()
    assert back.slot == 0 and back.evaluated == 6


def test_a_redundant_copy_is_given_up_before_a_conversations_only_cache() -> None:
    plan = Planner(slots=3)
    finished(plan, [*SYSTEM, 20])  # slot 0: a caller's conversation, the oldest
    long = Job([*SYSTEM, 10], budget=9)  # another's reply in progress, in slot 1
    plan.add(long)
    plan.assign()
    run_step(plan)
    on = finished(plan, [*SYSTEM, 10, 55])  # its prefix copied from the busy slot 1
    assert on.slot == 2
    plan.drop(long)  # (cancelled) slot 1 keeps its prompt: a prefix of slot 2, nothing of its own
    third = Job([*SYSTEM, 70], budget=1)
    plan.add(third)
    plan.assign()
    assert third.slot == 1  # not slot 0, the least recently used: its caller's only cache
    assert plan.cached(0) == [*SYSTEM, 20]


def test_a_slot_left_unused_long_enough_is_given_up_first() -> None:
    plan = Planner(slots=2)
    finished(plan, [*SYSTEM, 10, 11, 12, 13])  # slot 0: a long conversation that has ended
    for turn in range(STALE * 2):  # slot 1: another caller, turn after turn
        finished(plan, [*SYSTEM, 20, *range(30, 30 + turn)])
    newcomer = Job([60, 61], budget=1)
    plan.add(newcomer)
    plan.assign()
    assert newcomer.slot == 0


def test_a_reply_asked_for_with_its_judge_copies_the_judges_prompt_once_evaluated() -> None:
    """The end-of-turn judge scores the caller's words; the reply to them, asked for at the same
    time, continues that prompt: it waits one step and copies it, rather than evaluating the
    same tokens beside it — and a few shared tokens are not worth the wait."""
    words = [*SYSTEM, *range(10, 10 + FOLLOW)]
    plan = Planner(slots=4, chunk=64)
    judge = Job(words, wanted=frozenset({len(words) - 1}))
    reply = Job([*words, 90, 91], budget=8)
    plan.add(judge)
    plan.add(reply)
    assert plan.assign() == [Remove(0, 0)] and plan.waiting == 1  # the reply waits
    assert {e.job for e in run_step(plan)} == {judge}
    assert plan.assign() == [Remove(1, 0), Copy(0, 1, len(words))]  # (the judge still reads)
    assert [e.token for e in run_step(plan)] == [90, 91] and reply.next_token is not None
    # a reply sharing fewer than FOLLOW new tokens with the job in progress does not wait
    other = Job([*SYSTEM, 50, 51], budget=8)
    short = Job([*SYSTEM, 50, 51, 52], budget=8)
    plan.add(other)
    plan.add(short)
    plan.assign()
    assert other.slot is not None and short.slot is not None


def test_jobs_wait_for_a_free_slot_in_arrival_order() -> None:
    plan = Planner(slots=1)
    a, b, c = (Job([i, i + 1], budget=1) for i in (10, 20, 30))
    for job in (a, b, c):
        plan.add(job)
    plan.assign()
    assert plan.running == [a] and plan.waiting == 2
    plan.finish(a)
    plan.assign()
    assert plan.running == [b]


def test_cancelling_a_reply_removes_its_tokens_and_keeps_the_prompt() -> None:
    plan = Planner(slots=2)
    job = Job([*SYSTEM, 10], budget=20)
    plan.add(job)
    plan.assign()
    for _ in range(4):
        run_step(plan)
    assert len(plan.cached(0)) == 5 + 3
    assert plan.drop(job) == [Remove(0, 5)]
    assert plan.cached(0) == [*SYSTEM, 10] and not plan.busy()
    waiting = Job([1, 2], budget=1)
    blocker = Job([3, 4], budget=1)
    other = Job([5, 6], budget=1)
    for j in (blocker, other, waiting):
        plan.add(j)
    plan.assign()
    assert plan.drop(waiting) == [] and plan.waiting == 0
    assert plan.drop(waiting) == []  # twice: nothing


def test_bad_jobs_and_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        Job([])
    with pytest.raises(ValueError):
        Job([1, 2], wanted=frozenset({2}))
    with pytest.raises(ValueError):
        Planner(slots=0)


def another_reply(plan: Planner, now: float) -> Job:
    """Another caller's reply in progress: its first token sampled at ``now``."""
    neighbour = Job([8, 9], budget=500)
    plan.add(neighbour)
    plan.assign()
    plan.evaluated(plan.step(now=now))
    plan.sampled(neighbour, 7, now=now)
    return neighbour


def test_a_tail_is_paced_and_the_wait_says_when_it_may_go_on() -> None:
    plan = Planner(slots=3, head=2, pace=4.0)  # after 2 tokens, 4 tokens a second
    job = Job([1, 2], budget=50)
    plan.add(job)
    plan.assign()
    assert plan.wait(now=0.0) == 0.0  # a prompt to evaluate
    entries = plan.step(now=0.0)
    plan.evaluated(entries)
    plan.sampled(job, 7, now=10.0)  # its first token at t = 10 s
    for t in (10.0, 10.01, 10.1):  # the head at once; the 3rd (due at 10.25) within 1 / pace
        entries = plan.step(now=t)
        assert len(entries) == 1
        plan.evaluated(entries)
        plan.sampled(job, 7, now=t)
    assert job.generated == 4
    assert plan.step(now=10.2) == []  # the 4th: due at 10 + (4 - 2) / 4
    assert plan.wait(now=10.2) == pytest.approx(0.3)
    entries = plan.step(now=10.5)
    assert len(entries) == 1
    plan.evaluated(entries)
    plan.sampled(job, 7, now=10.5)  # the 5th: due at 10.75
    # a new caller's prompt is not held back by the paced tail (whose 5th token, due within
    # one token's time, shares the step)
    other = Job([5, 6], budget=5)
    plan.add(other)
    assert plan.wait(now=10.55) == 0.0
    plan.assign()
    assert [e.job for e in plan.step(now=10.55)] == [job, other, other]


def test_without_a_pace_every_reply_steps_at_once() -> None:
    plan = Planner(slots=1)
    job = Job([1], budget=500)
    plan.add(job)
    plan.assign()
    assert plan.wait(now=0.0) == 0.0
    for _ in range(100):
        entries = run_step(plan)
        assert len(entries) == 1
    assert plan.wait(now=0.0) == 0.0
    plan.finish(job)
    assert plan.wait(now=0.0) is None


def paced_tail(plan: Planner, job: Job, now: float) -> list[Entry]:
    """``job`` past its head (3 tokens from ``now``), then the step at ``now + 0.01``."""
    plan.add(job)
    plan.assign()
    plan.evaluated(plan.step(now=now))
    for _ in range(3):
        plan.sampled(job, 7, now=now)
        plan.evaluated(plan.step(now=now))
    plan.sampled(job, 7, now=now)
    return plan.step(now=now + 0.01)


def test_a_lone_reply_read_aloud_is_paced_too() -> None:
    """Pacing does not wait for another reply to be in progress: another caller whose words
    are still being recognized has no job yet, and needs the cores as much."""
    plan = Planner(slots=2, head=2, pace=4.0)
    job = Job([1, 2], budget=50)
    assert paced_tail(plan, job, now=10.0) == []  # its 4th token: due at 10.5
    assert plan.wait(now=10.01) == pytest.approx(0.49)


def test_a_text_reply_or_a_tool_calls_arguments_are_never_paced() -> None:
    plan = Planner(slots=2, head=2, pace=4.0)
    another_reply(plan, now=10.0)
    job = Job([1, 2], budget=50, paced=False)
    assert job in [e.job for e in paced_tail(plan, job, now=10.0)]
    assert plan.wait(now=10.01) == 0.0


def test_paced_tails_due_soon_share_a_step() -> None:
    """The step that evaluates one paced tail's token takes along the tails due within one
    token's time, so eight paced replies do not wake the context eight times as often."""
    plan = Planner(slots=3, head=2, pace=4.0)
    a, b, c = Job([1], budget=50), Job([2], budget=50), Job([3], budget=50)
    for job, at in ((a, 0.0), (b, 0.1), (c, 0.3)):  # first tokens: 4th due at .5, .6, .8
        plan.add(job)
        plan.assign()
        plan.evaluated(plan.step(now=at))
        for _ in range(4):
            plan.sampled(job, 7, now=at)
            plan.evaluated([e for e in plan.step(now=at) if e.job is job])
    for job in (a, b, c):
        plan.sampled(job, 7, now=0.3)
    assert plan.step(now=0.3) == []
    assert plan.wait(now=0.3) == pytest.approx(0.5 + 0.25 - 0.3)  # a's 5th token
    assert [e.job for e in plan.step(now=0.75)] == [a, b]  # b's is due at 0.85, c's at 1.05


def test_a_tail_yields_to_another_callers_first_words() -> None:
    """While another caller's prompt is evaluated and their reply makes its first words, a
    paced tail goes at ``yield_pace`` only: those steps hold fewer tokens. A tail behind even
    that rate still goes; once the other reply is past its first words, ``pace`` again."""
    plan = Planner(slots=2, head=2, pace=4.0, yield_pace=2.0, first_words=2)
    tail = Job([1, 2], budget=50)
    assert paced_tail(plan, tail, now=10.0) == []  # 4th token: due at 10.5 (11.0 yielding)
    other = Job([5, 6], budget=50)
    plan.add(other)
    plan.assign()
    # 10.5: the tail is due at its pace, but the other caller's prompt is being evaluated
    assert [e.job for e in plan.step(now=10.5)] == [other, other]
    plan.evaluated(plan.step(now=10.5))
    plan.sampled(other, 7, now=10.5)
    assert plan.wait(now=10.5) == 0.0  # the other's first words
    assert [e.job for e in plan.step(now=10.6)] == [other]
    plan.evaluated([Entry(other, 7, 2, True)])
    plan.sampled(other, 7, now=10.6)
    assert plan.wait(now=10.6) == 0.0
    assert [e.job for e in plan.step(now=10.9)] == [tail, other]  # due within 1 / pace of 11.0
    plan.evaluated(plan.step(now=10.9))
    plan.sampled(tail, 7, now=10.9)
    plan.sampled(other, 7, now=10.9)  # the other's 3rd token: past its first words
    # the tail's 5th: due at 10.75 at its pace (yielding it would wait until 11.5)
    assert [e.job for e in plan.step(now=10.95)] == [tail, other]


def test_a_job_waiting_for_a_slot_does_not_hold_tails_back() -> None:
    """With every slot busy, a waiting job needs a tail to finish: tails keep their pace."""
    plan = Planner(slots=1, head=2, pace=4.0, yield_pace=2.0)
    tail = Job([1, 2], budget=50)
    paced_tail(plan, tail, now=10.0)
    plan.add(Job([5, 6], budget=50))
    assert plan.assign() == []
    assert plan.wait(now=10.01) == pytest.approx(0.49)
    assert [e.job for e in plan.step(now=10.5)] == [tail]


def test_without_a_yield_pace_tails_keep_their_pace() -> None:
    plan = Planner(slots=2, head=2, pace=4.0)
    tail = Job([1, 2], budget=50)
    paced_tail(plan, tail, now=10.0)
    other = Job([5, 6], budget=50)
    plan.add(other)
    plan.assign()
    assert [e.job for e in plan.step(now=10.5)] == [tail, other, other]


def test_without_keeping_conversations_the_longest_prefix_wins() -> None:
    """``llm.keep_conversations`` off (for A/Bs): the slot of the conversation sharing the
    system prompt is taken, as the planner used to."""
    plan = Planner(slots=3, keep=False)
    finished(plan, [*SYSTEM, 10, 11])
    other = Job([*SYSTEM, 20], budget=1)
    plan.add(other)
    assert plan.assign() == [Remove(0, 4)]
    assert other.slot == 0


def test_a_reply_s_first_words_share_steps_with_few_prompt_tokens() -> None:
    plan = Planner(slots=2, chunk=64, first_chunk=4, first_words=3)
    reply = Job([*SYSTEM, 10], budget=50)
    plan.add(reply)
    plan.assign()
    run_step(plan)  # its prompt; its first token is sampled
    long = Job([*SYSTEM, *range(20, 40)], budget=50)  # another caller's long prompt
    plan.add(long)
    plan.assign()
    sizes = []
    while reply.generated <= 3:
        entries = run_step(plan)
        sizes.append(sum(1 for e in entries if e.job is long))
    assert sizes == [4, 4, 4]  # while the reply makes its first words: 4 prompt tokens a step
    entries = run_step(plan)
    assert sum(1 for e in entries if e.job is long) == 20 - 12  # then the rest (past SYSTEM)
    off = Planner(slots=1, chunk=64)
    off.add(Job(list(range(1, 30)), budget=5))
    off.assign()
    assert len(off.step()) == 29  # (off by default)


OLD_TURNS = list(range(200, 260))  # the turns the conversation dropped
KEPT_TURNS = list(range(300, 340))  # the turns it kept (MIN_SHIFT or more tokens)


@pytest.mark.parametrize("slots", [1, 3])
def test_a_conversation_past_its_window_moves_its_kept_turns_back_instead_of_evaluating_them(
    slots: int,
) -> None:
    """Its oldest turns were dropped: the prompt is the system prompt, then turns its slot
    holds after the dropped ones. They move back (one ``Shift``), and only the new turn is
    evaluated — in its own slot, even beside an empty one (what the shift steps over is this
    conversation's own dropped history, no loss)."""
    plan = Planner(slots=slots)
    finished(plan, [*SYSTEM, *OLD_TURNS, *KEPT_TURNS])
    later = Job([*SYSTEM, *KEPT_TURNS, 400, 401], budget=1)
    plan.add(later)
    ops = plan.assign()
    assert later.slot == 0
    assert ops == [Shift(0, len(SYSTEM), len(OLD_TURNS)), Remove(0, len(SYSTEM) + len(KEPT_TURNS))]
    assert plan.cached(0) == [*SYSTEM, *KEPT_TURNS]
    assert later.evaluated == len(SYSTEM) + len(KEPT_TURNS)
    assert [e.token for e in plan.step()] == [400, 401]


def test_without_the_shift_or_with_too_little_to_move_the_turns_are_evaluated_again() -> None:
    plan = Planner(slots=1, shift=False)
    finished(plan, [*SYSTEM, *OLD_TURNS, *KEPT_TURNS])
    later = Job([*SYSTEM, *KEPT_TURNS, 400], budget=1)
    plan.add(later)
    assert plan.assign() == [Remove(0, len(SYSTEM))]
    assert later.evaluated == len(SYSTEM)
    plan = Planner(slots=1)
    few = KEPT_TURNS[: MIN_SHIFT - 1]  # a short run: more likely chance than kept turns
    finished(plan, [*SYSTEM, *OLD_TURNS, *few])
    later = Job([*SYSTEM, *few, 400], budget=1)
    plan.add(later)
    assert plan.assign() == [Remove(0, len(SYSTEM))]
