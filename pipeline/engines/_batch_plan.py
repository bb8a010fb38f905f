"""Which tokens the shared llama.cpp context evaluates next, for several conversations at once.

Plain data, no llama.cpp (``llm_batched.py`` applies the plan): a context holds ``slots``
sequences (llama.cpp sequence ids ``0 .. slots-1``) in one KV cache. A :class:`Job` (a reply
to generate, or a prompt to score) waits, then runs in one slot, and leaves the slot's cache
behind for the next job to re-use::

    add(job) ──▶ waiting ──assign()──▶ running in a slot ──finish()/drop()──▶ the slot is idle
                  (FIFO)                 │  step() → entries to decode        (its tokens stay
                                         │  evaluated(entries)                 cached)
                                         ▼
                                  prompt evaluated, then one token per step

Re-use: a job goes to the idle slot where it destroys the least of what no other slot holds —
an empty slot, a copy another slot holds too, its own conversation's previous turn, a slot
nobody has used for ``STALE`` placements — then the one sharing the longest prefix with its
prompt, then the least recently used; when another slot (even a busy one) shares a longer prefix,
that prefix is copied (``Copy``). So callers do not take each other's cached conversations: a
new one copies the system prompt they all share into a free slot instead of taking the slot of
another caller, whose next turn would evaluate its whole conversation again. The cache past the
shared prefix is removed (``Remove``). When a conversation outgrew its window and its oldest
turns were dropped (``context_fit.py``), its prompt is the system prompt and then what its slot
holds *after* the dropped turns: those cached tokens move back over the dropped ones (``Shift``;
llama.cpp shifts their positions) instead of being evaluated again — hundreds of tokens, seconds
on two cores, at the turn where a long conversation first overflows. At least the tokens
from the job's first wanted logits on are evaluated again, so their logits exist. A job whose
prompt continues another's still being evaluated (``FOLLOW`` tokens or more that no cache holds
yet: the end-of-turn judge and the reply it precedes, asked for together) waits until they are
evaluated and copies them, instead of evaluating them beside it.

Urgency: one step decodes the next token of every running reply and up to ``chunk`` prompt
tokens of the jobs still evaluating their prompt, oldest first; a job waiting for a slot takes
the first one free, and the first token of a reply comes out of the step that evaluates the end
of its prompt. So a caller's first token waits for at most one step of others' work, never for
the tail of another reply. While a reply is within its first ``first_words`` tokens, a step
takes at most ``first_chunk`` prompt tokens beside it: a step's time is mostly its prompt tokens,
and a caller about to hear their first words should not wait for a whole chunk of another's
prompt at each of them. A reply's tail only has to stay ahead of its speech: past its first
``head`` tokens a reply read aloud is paced at ``pace`` tokens a second (faster than anyone
speaks), so the cores it would have taken serve other callers' first words (their ASR, prompt
and first clause) meanwhile — whether or not another reply is in progress now: a caller whose
words are still being recognized has no job here yet. ``_due()`` says when a paced reply may go
on; a step that runs anyway takes the paced replies due within one token's time
(``1 / pace``) along, so paced tails share steps instead of each waking the context alone.
While another caller waits for their first words (a job evaluates its prompt, or a reply is
within its first words), a paced tail goes at only ``yield_pace`` (still faster than speech): a
step's time grows with its tokens, so those words' steps are not made longer by tails far ahead
of their speech. ``pace`` 0: no pacing; ``yield_pace`` 0: ``pace``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

FOLLOW = 16
"""Prompt tokens another job is about to evaluate that are worth waiting a step for."""
FIRST_WORDS = 12
"""A reply's first tokens (its first clause) that ``first_chunk`` keeps quick."""
STALE = 6
"""A slot not taken for this many placements per slot holds a conversation that has probably
ended: re-using it costs nothing."""
MIN_SHIFT = 32
"""Cached tokens worth moving back rather than evaluating again (fewer: a few ms to evaluate, and
a short run matching is more likely chance than the conversation's later turns)."""


@dataclass(slots=True, eq=False)
class Job:
    """One request. ``prompt``: the tokens the sequence must hold; ``wanted``: positions of
    ``prompt`` whose logits are asked for (scoring), besides the last one for a reply;
    ``budget``: the most tokens to generate (0: score only, no reply)."""

    prompt: list[int]
    budget: int = 0
    wanted: frozenset[int] = frozenset()
    slot: int | None = None
    evaluated: int = 0
    """Tokens of ``prompt`` in the slot's cache."""
    generated: int = 0
    next_token: int | None = None
    """Sampled, not yet evaluated: the next step evaluates it."""
    first_at: float | None = None
    """When its first token was sampled."""
    paced: bool = True
    """May be paced: a reply read aloud (a text reply and a tool call's arguments never are)."""

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("a job needs at least one prompt token")
        if any(not 0 <= p < len(self.prompt) for p in self.wanted):
            raise ValueError("wanted logits must be positions of the prompt")
        if self.budget > 0:
            self.wanted = self.wanted | {len(self.prompt) - 1}

    @property
    def first_wanted(self) -> int:
        return min(self.wanted, default=len(self.prompt) - 1)

    @property
    def prefilling(self) -> bool:
        return self.evaluated < len(self.prompt)


@dataclass(slots=True)
class Remove:
    """Drop the cache of ``slot`` from position ``start`` on."""

    slot: int
    start: int


@dataclass(slots=True)
class Copy:
    """Share positions ``[0, length)`` of ``source``'s cache with ``slot``."""

    source: int
    slot: int
    length: int


@dataclass(slots=True)
class Shift:
    """Drop positions ``[start, start + delta)`` of ``slot``'s cache; those after move back by
    ``delta``."""

    slot: int
    start: int
    delta: int


Op = Remove | Copy | Shift


@dataclass(slots=True, frozen=True)
class Entry:
    """One token of a step: ``token`` at ``pos`` in ``job``'s slot; ``logits``: read after."""

    job: Job
    token: int
    pos: int
    logits: bool


@dataclass(slots=True)
class _Slot:
    tokens: list[int] = field(default_factory=list)
    job: Job | None = None
    used: int = 0
    """When it last took a job (a counter): of equal prefixes, the oldest slot is taken."""


class Planner:
    def __init__(
        self,
        slots: int,
        chunk: int = 256,
        *,
        head: int = 0,
        pace: float = 0.0,
        keep: bool = True,
        first_chunk: int = 0,
        first_words: int = FIRST_WORDS,
        shift: bool = True,
        yield_pace: float = 0.0,
    ) -> None:
        if slots < 1 or chunk < 1:
            raise ValueError(f"slots and chunk must be at least 1, got {slots}, {chunk}")
        if head < 0 or pace < 0 or first_chunk < 0 or first_words < 0 or yield_pace < 0:
            raise ValueError(
                "head, pace, first_chunk, first_words and yield_pace must not be negative"
            )
        self.chunk = chunk
        self.first_chunk = first_chunk
        """While a reply is within its ``first_words`` tokens, a step evaluates at most this
        many prompt tokens (0: ``chunk`` always)."""
        self.first_words = first_words
        self.head = head
        self.pace = pace
        self.yield_pace = min(yield_pace, pace) if yield_pace > 0 else pace
        """A paced tail's rate while another caller waits for their first words."""
        self.keep = keep
        """Choose slots by what they would lose (else: longest prefix, least recently used)."""
        self.shift = shift
        """Move cached tokens back over dropped ones (``Shift``) when that re-uses them."""
        self._slots = [_Slot() for _ in range(slots)]
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []  # in the order they started
        self._clock = 0

    # ------------------------------------------------------------------ state

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> list[Job]:
        return list(self._running)

    def cached(self, slot: int) -> list[int]:
        """The tokens in ``slot``'s cache (positions 0, 1, …)."""
        return list(self._slots[slot].tokens)

    def busy(self) -> bool:
        return bool(self._waiting or self._running)

    # ------------------------------------------------------------------ jobs

    def add(self, job: Job) -> None:
        self._waiting.append(job)

    def assign(self) -> list[Op]:
        """Waiting jobs into idle slots; the cache operations to run before the next step. A
        job whose prompt continues one still being evaluated waits for it (``_follows``)."""
        ops: list[Op] = []
        held: list[Job] = []
        while self._waiting:
            free = [i for i, s in enumerate(self._slots) if s.job is None]
            if not free:
                break
            job = self._waiting.popleft()
            if self._follows(job):
                held.append(job)
                continue
            ops += self._place(job, free)
        self._waiting.extendleft(reversed(held))
        return ops

    def _follows(self, job: Job) -> bool:
        """Another job still evaluating its prompt will hold ``FOLLOW`` or more tokens of this
        one's prompt that no cache holds yet (the end-of-turn judge's prompt and the reply's,
        asked for together): this one is placed once they are evaluated, and copies them."""
        limit = job.first_wanted
        cached = max(min(_common(s.tokens, job.prompt), limit) for s in self._slots)
        return any(
            min(_common(other.prompt, job.prompt), limit) >= cached + FOLLOW
            for other in self._running
            if other.prefilling
        )

    def _place(self, job: Job, free: list[int]) -> list[Op]:
        limit = job.first_wanted  # at least the first wanted position is evaluated again
        shared = [min(_common(s.tokens, job.prompt), limit) for s in self._slots]
        moved = [
            self._moved(s.tokens, job.prompt, shared[i], limit) for i, s in enumerate(self._slots)
        ]
        kept = [shared[i] + moved[i][1] for i in range(len(self._slots))]
        # (the turns a shift steps over are this conversation's, dropped from it: no loss)
        used = [shared[i] + sum(moved[i]) for i in range(len(kept))]
        if self.keep:
            slot = min(free, key=lambda i: (self._loss(i, used[i]), -kept[i], self._slots[i].used))
        else:
            slot = max(free, key=lambda i: (kept[i], -self._slots[i].used))
        source = max(range(len(self._slots)), key=lambda i: shared[i])
        target = self._slots[slot]
        ops: list[Op]
        if shared[source] > kept[slot]:
            ops = [Remove(slot, 0), Copy(source, slot, shared[source])]
            target.tokens = self._slots[source].tokens[: shared[source]]
        elif moved[slot][1]:
            start, (delta, length) = shared[slot], moved[slot]
            ops = [Shift(slot, start, delta), Remove(slot, start + length)]
            target.tokens = target.tokens[:start] + target.tokens[start + delta :][:length]
        else:
            ops = [Remove(slot, shared[slot])]
            del target.tokens[shared[slot] :]
        self._clock += 1
        target.job, target.used = job, self._clock
        job.slot, job.evaluated = slot, len(target.tokens)
        self._running.append(job)
        return ops

    def _moved(
        self, tokens: list[int], prompt: list[int], start: int, limit: int
    ) -> tuple[int, int]:
        """``(delta, length)``: ``prompt[start : start + length]`` is cached ``delta`` positions
        later in ``tokens`` (the turns between were dropped from the conversation); ``(0, 0)``
        when no ``MIN_SHIFT`` tokens or more can be re-used that way."""
        if not self.shift or limit - start < MIN_SHIFT:
            return 0, 0
        probe = prompt[start : start + MIN_SHIFT]
        for at in range(start + 1, len(tokens) - MIN_SHIFT + 1):
            if tokens[at] == probe[0] and tokens[at : at + MIN_SHIFT] == probe:
                return at - start, min(_common(tokens[at:], prompt[start:]), limit - start)
        return 0, 0

    def _loss(self, index: int, kept: int) -> int:
        """Cached tokens that a job keeping the first ``kept`` of slot ``index`` would destroy
        and no other slot holds (0 for a slot left unused for ``STALE`` rounds)."""
        slot = self._slots[index]
        if self._clock - slot.used >= STALE * len(self._slots):
            return 0
        held = max(
            (_common(slot.tokens, other.tokens) for other in self._slots if other is not slot),
            default=0,
        )
        return max(0, len(slot.tokens) - max(kept, held))

    def step(self, now: float = 0.0) -> list[Entry]:
        """The next batch: each running reply's next token (unless it is ahead of its pace),
        then prompt tokens (oldest job first) up to ``chunk`` — ``first_chunk`` when a reply
        in the step is still within its first words: a step's time is mostly its prompt
        tokens, and a caller about to hear their first words should not wait for another's
        whole prompt at every one of them."""
        entries: list[Entry] = []
        along = now + (1.0 / self.pace if self.pace > 0 else 0.0)  # due soon: share this step
        pace = self._pace_now()
        room = self.chunk
        for job in self._running:
            if not job.prefilling and job.next_token is not None and self._due(job, pace) <= along:
                pos = len(self._slots[_slot(job)].tokens)
                entries.append(Entry(job, job.next_token, pos, True))
                if self.first_chunk and job.generated <= self.first_words:
                    room = min(room, self.first_chunk)
        for job in self._running:
            if room <= 0:
                break
            if job.prefilling:
                end = min(len(job.prompt), job.evaluated + room)
                for pos in range(job.evaluated, end):
                    entries.append(Entry(job, job.prompt[pos], pos, pos in job.wanted))
                room -= end - job.evaluated
        return entries

    def evaluated(self, entries: list[Entry]) -> None:
        """``entries`` are in the cache now."""
        for entry in entries:
            job = entry.job
            self._slots[_slot(job)].tokens.append(entry.token)
            if job.prefilling:
                job.evaluated += 1
            else:
                job.next_token = None

    def sampled(self, job: Job, token: int, now: float = 0.0) -> None:
        """The reply's next token (evaluated by the next step)."""
        job.generated += 1
        job.next_token = token
        if job.first_at is None:
            job.first_at = now

    def wait(self, now: float) -> float | None:
        """Seconds until the next step has work (0: now); ``None``: no work at all."""
        if any(s.job is None for s in self._slots) and self._waiting:
            return 0.0
        if any(j.prefilling for j in self._running):
            return 0.0
        pace = self._pace_now()  # as ``step`` will
        due = [self._due(j, pace) for j in self._running if j.next_token is not None]
        return max(0.0, min(due) - now) if due else None

    def _due(self, job: Job, pace: float | None = None) -> float:
        """When ``job`` may evaluate its next token: at once within its head, then at
        ``pace`` tokens a second from its first token (a reply not read aloud, or a tool
        call's arguments, are never held back)."""
        pace = self.pace if pace is None else pace
        if pace <= 0 or not job.paced or job.generated <= self.head or job.first_at is None:
            return float("-inf")
        return job.first_at + (job.generated - self.head) / pace

    def _pace_now(self) -> float:
        """The tails' rate for the next step."""
        return self.yield_pace if self._awaited() else self.pace

    def _paced(self, job: Job) -> bool:
        return self._due(job) != float("-inf")

    def _awaited(self) -> bool:
        """Another caller waits for their first words: a job evaluates its prompt, or a reply
        is within its first words (not a job waiting for a slot: a tail held back would only
        free its slot later)."""
        if self.yield_pace == self.pace:
            return False
        return any(
            job.prefilling
            or (job.budget > 0 and job.generated <= self.first_words and not self._paced(job))
            for job in self._running
        )

    def finish(self, job: Job) -> None:
        """``job`` is done; its slot keeps what it evaluated."""
        self._release(job)

    def drop(self, job: Job) -> list[Op]:
        """Cancel ``job``: out of the queue, or out of its slot with the reply's tokens
        removed from the cache (the prompt stays for the next turn)."""
        if job in self._waiting:
            self._waiting.remove(job)
            return []
        if job not in self._running:
            return []
        slot = _slot(job)
        self._release(job)
        tokens = self._slots[slot].tokens
        if len(tokens) <= len(job.prompt):
            return []
        del tokens[len(job.prompt) :]
        return [Remove(slot, len(job.prompt))]

    def _release(self, job: Job) -> None:
        self._running.remove(job)
        self._slots[_slot(job)].job = None


def _slot(job: Job) -> int:
    if job.slot is None:
        raise ValueError("the job is not running")
    return job.slot


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
