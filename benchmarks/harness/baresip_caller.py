"""The baresip caller: ``voice bench --protocol baresip`` calls the SIP agent with a real softphone.

Debian's baresip (``softphone.py``) dials ``sip:agent@HOST:PORT`` and talks G.711 RTP with the
server; the harness never touches the call's packets. It only steers the phone and watches the
wire:

- **The microphone is a file.** baresip's ``aufile`` source reads a whole WAV when it starts
  (no live feed), and the call ends when the file does. Each time the driver speaks (the
  question of a turn, later its interruption), :class:`FileMicrophone` writes what is to be said
  — the segments with their scripted pauses, then minutes of silence — and switches the live
  call's source to it over the control socket (``ausrc aufile,FILE``). So one call carries a
  whole scenario, as for the other callers (the conversation keeps its context), and an
  interruption is started once the reply is audible, ``after_ms`` into it, as theirs is. The
  switch itself takes some milliseconds; it delays where the interruption lands, never what is
  measured, because every mark comes from the wire.
- **Timing is the wire's.** A raw socket on ``lo`` (``wiretap.py``; root) sees each RTP packet
  of the call once, stamped by the kernel on ``perf_counter``'s clock; the call's RTP ports come
  from the SDP of its INVITE and 200. Packets the phone sent mark when each utterance began and
  ended (the packet holding its first and last audible sample, found by the RTP timestamp's
  offset into the file, anchored on the first audible packet after the switch); packets it was
  sent become ``audio`` events, audible or not, and a reply cut off mid-speech (a loud frame,
  then digital silence) a ``clear``, as the SIP caller's are (:func:`~.sip_client.cut_short`).

From there everything is the harness's: :class:`~.runner.TurnDriver` runs the turns on these
events, :func:`~.timeline.analyze_turn` measures them as for a phone line (no reply ids, marks
or transcripts: a reply is a burst of audible audio; a barge-in ends at the last packet before
the cut, or without one at its last audible packet; an interruption that came when nothing
audible was playing, or once the reply had gone quiet, is recorded as such, with no figure).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .clients import CONNECT_TIMEOUT_S, Call, Microphone, Utterance, lay_out
from .sip_client import cut_short
from .softphone import Baresip, SoftphoneError, write_wav
from .timeline import AUDIO, BARESIP, CLEAR, Ev
from .wiretap import CallWire, Datagram, RtpSeen, Wiretap

BARESIP_RATE = 8_000
TAIL_S = 300.0
"""Silence after what is said: baresip ends the call when its microphone file runs out, so each
file outlasts any turn (its reply, a missed turn's timeout, the next turn's start)."""
TOLERANCE_MS = 40
"""How far (at most) a packet may sit from where the file puts it and still count for its
utterance (never more than half the pause between two utterances)."""
HANGUP_TIMEOUT_S = 5.0
WRAP = 1 << 32


@dataclass(slots=True)
class SpeechMarks:
    """Where the utterances of one microphone file went out on the wire (sans-I/O).

    ``spans`` are the sample offsets of each utterance's first and last audible sample in the
    file. Fed the phone's packets in order, it anchors the file on the first audible packet
    (holding ``spans[0][0]``) and places every later packet by its RTP timestamp; utterance i's
    onset is its first audible packet, its end its last, settled once a packet past it (by
    :data:`TOLERANCE_MS`) has gone out."""

    spans: Sequence[tuple[int, int]]
    rate: int = BARESIP_RATE
    onsets: list[float | None] = field(default_factory=list)
    ends: list[float | None] = field(default_factory=list)
    settled: int = 0
    """Utterances whose end is final."""
    _base: int | None = None

    def __post_init__(self) -> None:
        self.onsets = [None] * len(self.spans)
        self.ends = [None] * len(self.spans)

    def _limits(self) -> list[int]:
        """Window boundaries: utterance i owns offsets in ``[limit[i], limit[i + 1])``."""
        tol = self.rate * TOLERANCE_MS // 1000
        limits = [-WRAP]
        for (_, end), (start, _) in zip(self.spans, self.spans[1:], strict=False):
            limits.append(start - min(tol, max(0, start - end) // 2))
        last_end = self.spans[-1][1] if self.spans else 0
        return [*limits, last_end + tol]

    def feed(self, packet: RtpSeen) -> None:
        if self.settled == len(self.spans):
            return
        if self._base is None:
            if not packet.loud:
                return
            first = self.spans[0][0]
            self._base = packet.timestamp - (first - first % packet.samples)
        offset = (packet.timestamp - self._base) % WRAP
        offset = offset - WRAP if offset >= WRAP // 2 else offset
        limits = self._limits()
        while self.settled < len(self.spans) and offset >= limits[self.settled + 1]:
            self.settled += 1  # a packet past this utterance: its end is final
        i = self.settled
        if i == len(self.spans) or not packet.loud:
            return
        if self.onsets[i] is None:
            self.onsets[i] = packet.t
        self.ends[i] = packet.t


class FileMicrophone(Microphone):
    """baresip's microphone: :meth:`say` writes a file and switches the call to it; the marks of
    each :class:`~.clients.Utterance` are set from the wire (:meth:`heard`)."""

    def __init__(self, rate: int = BARESIP_RATE) -> None:
        super().__init__(self._unused, rate)
        self.folder = Path(".")
        """Where the files go (the call's folder, once it is up)."""
        self.softphone: Baresip | None = None
        self.files = 0
        self._marks: SpeechMarks | None = None
        self._said: list[Utterance] = []

    @staticmethod
    async def _unused(chunk: np.ndarray) -> None:
        raise NotImplementedError("baresip reads its microphone from a file")

    def silence(self) -> np.ndarray:
        return np.zeros(int(TAIL_S * self.rate), np.int16)

    def say(self, pieces: Sequence[np.ndarray], pauses_ms: Sequence[int] = ()) -> list[Utterance]:
        if self.softphone is None:
            raise ConnectionError("the phone is not on a call")
        loop = asyncio.get_running_loop()
        audio, spans = lay_out(pieces, pauses_ms, self.rate)
        self.files += 1
        path = self.folder / f"mic{self.files}.wav"
        write_wav(path, np.concatenate([audio, self.silence()]), self.rate)
        self._marks = SpeechMarks(spans, self.rate)
        self._said = [Utterance(loop.create_future(), loop.create_future()) for _ in spans]
        self.softphone.switch_microphone(path)
        previous = self.folder / f"mic{self.files - 1}.wav"
        previous.unlink(missing_ok=True)  # (baresip read it whole when it switched to it)
        return list(self._said)

    def heard(self, packet: RtpSeen) -> None:
        """A packet the phone sent (the uplink)."""
        marks = self._marks
        if marks is None:
            return
        marks.feed(packet)
        for i, said in enumerate(self._said):
            onset = marks.onsets[i]
            if onset is not None and not said.onset.done():
                said.onset.set_result(onset)
            end = marks.ends[i]
            if i < marks.settled and end is not None and not said.end.done():
                said.end.set_result(end)

    async def run(self) -> None:
        """(Nothing to pace: baresip reads the file in real time.) Waits until cancelled."""
        await asyncio.Event().wait()


class BaresipCall(Call):
    """baresip on loopback calling ``url`` (``sip:agent@127.0.0.1:5060``), timed on the wire."""

    protocol = BARESIP
    rate = BARESIP_RATE

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.folder: Path | None = None
        self.microphone = FileMicrophone(self.rate)
        self.mic = self.microphone
        self.softphone: Baresip | None = None
        self.tap: Wiretap | None = None
        self.wire: CallWire | None = None
        self.established = False
        self._last_frame: np.ndarray | None = None

    async def _connect(self) -> None:
        """Open the tap, start baresip, dial, wait until the call is up. A failure is a
        :class:`ConnectionError` (the runner's failed call) and leaves nothing running; no
        tap (not root) is a :class:`~.wiretap.WiretapError`, an ``OSError`` too."""
        # a short folder: baresip's ``ausrc`` keeps 127 characters of a path
        self.folder = self.microphone.folder = Path(tempfile.mkdtemp(prefix="vb-", dir="/tmp"))
        try:
            self.tap = Wiretap(self._datagram)
            await self.tap.__aenter__()
            softphone = Baresip(self.folder, self.microphone.silence(), record=False)
            self.wire = CallWire(
                ("127.0.0.1", softphone.sip_port), self.microphone.heard, self._downlink
            )
            self.softphone = await softphone.__aenter__()
            await softphone.dial(self.url)
            event = await softphone.wait_event(
                ("CALL_ESTABLISHED", "CALL_CLOSED"), CONNECT_TIMEOUT_S
            )
            if event.get("type") != "CALL_ESTABLISHED":
                raise ConnectionError(f"the agent did not answer: {event.get('param')}")
            self.established = True
            self.microphone.softphone = softphone
        except BaseException as exc:
            await self._disconnect()
            if isinstance(exc, SoftphoneError | TimeoutError):
                raise ConnectionError(f"baresip: {exc}") from exc
            raise

    def _datagram(self, datagram: Datagram) -> None:
        if self.wire is not None:
            self.wire.feed(datagram)

    def _downlink(self, packet: RtpSeen) -> None:
        if cut_short(self._last_frame, packet.audio):  # (the SIP caller's rule: a ``clear``)
            self.add(Ev(packet.t, CLEAR))
        self._last_frame = packet.audio
        self.add(Ev(packet.t, AUDIO, loud=packet.loud))

    async def _read(self) -> None:
        """Until the call ends (the agent's BYE, or the phone gave up)."""
        try:
            assert self.softphone is not None
            event = await self.softphone.wait_event(("CALL_CLOSED", "CONTROL_CLOSED"), 1e9)
            self.established = False
            self.closed = f"the call ended: {event.get('param') or event.get('type')}"
        finally:
            self._new.set()

    async def _hang_up(self) -> None:
        if self.softphone is None or not self.established or self.closed is not None:
            return
        self.established = False
        await self.softphone.command("hangup")
        with contextlib.suppress(TimeoutError):
            await self.softphone.wait_event("CALL_CLOSED", HANGUP_TIMEOUT_S)

    async def _disconnect(self) -> None:
        self.microphone.softphone = None
        try:
            if self.softphone is not None:
                await self.softphone.__aexit__()
        finally:
            if self.tap is not None:
                self.tap.close()
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)

    def vanish(self) -> None:
        """The phone dies at once: no BYE (the server finds out from the silence)."""
        if self._tasks:
            self._tasks[1].cancel()
        self.established = False
        if self.softphone is not None:
            self.softphone.kill()
