"""One call's RTP on asyncio: a UDP socket, the caller's audio in, the agent's audio out paced.

In: datagrams pass :class:`~.rtp.Receiver` (source, payload type, header), audio frames go
through the call's decoder (``codec.py``: G.711 or G.722, decoded as they arrive: G.722's
state follows arrival order) and the :class:`~.rtp.JitterBuffer` to ``on_audio``; RFC 4733 events go
to ``on_dtmf`` once per key press. RTCP is counted and ignored.

Out: :meth:`RtpMedia.play` queues 20 ms frames (at most ``max_queued_ms``; beyond that the
oldest are dropped); a sender task sends one packet every 20 ms on ``clock`` (the loop's, or a
test's virtual one), drift-free — the next frame, or silence when there is none, so the peer's
jitter buffer sees one steady stream. Each frame of audio that leaves also goes to
``on_frame`` (the echo canceller's reference). A frame can carry a mark (the reply item and how
many ms of it end with this frame): ``on_sent`` is called with it the moment the frame leaves,
which is what the caller can have heard. While ``held()`` (the session holds the agent's voice
at the caller's first speech window: they may be cutting in) the queue waits and silence goes
out, so the caller stops hearing the agent then, not a queue's worth later; :meth:`clear` drops
what is queued (barge-in). While
the peer holds the call (``sendonly``/``inactive``) nothing is sent. Keypad digits
(:meth:`RtpMedia.send_digits`) are sent as RFC 4733 events when the peer negotiated them: they
take the 20 ms ticks before the queued audio (which waits), one event after the other, each with
the timestamp of its start and its end packet sent three times; the stream's timestamp then
moves on by the time the event took, so the audio after it stays on the wall clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import numpy as np

from pipeline.clock import Clock, MonotonicClock
from pipeline.tasks import cancel_and_wait

from . import dtmf, rtp
from .codec import Coder
from .message import SipError
from .sdp import Media

log = logging.getLogger("voice.transport.sip")
FRAME_S = 0.02
MAX_QUEUED_EVENTS = 512
"""RFC 4733 packets waiting to go out (a 100 ms key press is 7 of them, 140 ms)."""
Mark = tuple[str, int]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, media: RtpMedia) -> None:
        self.media = media

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.media.received(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like
        log.debug("RTP socket error: %s", exc)


class RtpMedia:
    """The RTP side of one call. :meth:`open` binds, :meth:`close` stops everything."""

    def __init__(
        self,
        media: Media,
        remote: tuple[str, int],
        *,
        on_audio: Callable[[np.ndarray, bytes | None], None],
        on_dtmf: Callable[[str], None],
        on_sent: Callable[[Mark], None],
        signalling_host: str | None = None,
        jitter_depth: int = 3,
        max_queued_ms: int = 2000,
        clock: Clock | None = None,
    ) -> None:
        self.media = media
        self.on_audio, self.on_dtmf, self.on_sent = on_audio, on_dtmf, on_sent
        self.on_frame: Callable[[np.ndarray], None] | None = None
        """Given each 20 ms of audio (int16 at the codec's rate) the moment its packet is sent."""
        self.held: Callable[[], bool] = lambda: False
        """Whether the queued audio must wait (``Session.reply_held``): silence goes out."""
        self.clock = clock or MonotonicClock()
        self.signalling_host = signalling_host
        self.receiver = rtp.Receiver(remote, self._payloads(media), signalling_host)
        self.coder = Coder(media.format)
        self.jitter = rtp.JitterBuffer(jitter_depth, media.format.frame_samples)
        self.detector = dtmf.Detector()
        self.packetizer = rtp.Packetizer(media.payload)
        self.sending = True
        self.port = 0
        self.last_received: float | None = None
        self.sent_packets = 0
        self.dropped_frames = 0
        self._queue: deque[tuple[np.ndarray, Mark | None]] = deque()
        self._max_frames = max(1, max_queued_ms // 20)
        self._carry = np.zeros(0, np.int16)
        self._digits: deque[tuple[dtmf.Event, bool]] = deque()
        self._event_start: int | None = None
        self._event_ticks = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._sender: asyncio.Task[None] | None = None

    @staticmethod
    def _payloads(media: Media) -> set[int]:
        te = media.telephone_event
        return {media.payload} | ({te} if te is not None else set())

    async def open(self, host: str) -> int:
        """Bind a UDP port on ``host`` and start sending; returns the port."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(host, 0)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        self._sender = loop.create_task(self._send_loop(), name=f"rtp-sender-{self.port}")
        return self.port

    async def close(self) -> None:
        """Close the socket and stop sending. Cancel-safe (the socket closes first)."""
        if self._transport is not None:
            self._transport.close()
        if self._sender is not None:
            await cancel_and_wait((self._sender,))

    def update(self, media: Media, remote: tuple[str, int], *, sending: bool) -> None:
        """A re-INVITE changed the stream: codec, address, hold."""
        if media.payload != self.media.payload:
            self.packetizer.payload_type = media.payload
            self.coder = Coder(media.format)
            self.jitter.frame_samples = media.format.frame_samples
            self.clear()  # (queued frames are at the old codec's rate)
        if remote != self.receiver.expected or media != self.media:
            self.receiver = rtp.Receiver(remote, self._payloads(media), self.signalling_host)
        self.media = media
        self.sending = sending

    # ------------------------------------------------------------------ in

    def received(self, data: bytes, addr: tuple[str, int]) -> None:
        packet = self.receiver.accept(data, addr)
        if packet is None:
            return
        self.last_received = asyncio.get_running_loop().time()
        if packet.payload_type == self.media.telephone_event:
            self._play_in(self.jitter.push_wire(packet.sequence, None))
            try:
                digit = self.detector.receive(packet.timestamp, packet.payload)
            except SipError:
                self.receiver.malformed += 1
                return
            if digit is not None:
                self.on_dtmf(digit)
            return
        if not packet.payload:
            return
        frame = (self.coder.decode(packet.payload), packet.payload)
        self._play_in(self.jitter.push_wire(packet.sequence, frame))

    def _play_in(self, frames: list[tuple[np.ndarray, bytes | None]]) -> None:
        for frame, wire in frames:
            self.on_audio(frame, wire)

    # ------------------------------------------------------------------ out

    def play(self, audio: np.ndarray, mark: Mark | None = None) -> None:
        """Queue audio (int16 at the codec's :attr:`rate`) in 20 ms frames; ``mark`` goes with
        its last frame."""
        n = self.coder.codec.frame_samples
        audio = np.concatenate([self._carry, audio]) if len(self._carry) else audio
        whole = len(audio) // n * n
        self._carry = audio[whole:]
        frames = [audio[i : i + n] for i in range(0, whole, n)]
        for i, frame in enumerate(frames):
            if len(self._queue) >= self._max_frames:
                self._queue.popleft()
                self.dropped_frames += 1
            self._queue.append((frame, mark if i == len(frames) - 1 else None))

    def flush(self, mark: Mark | None = None) -> None:
        """Send what is left of a reply (less than a frame), padded with silence."""
        if len(self._carry):
            pad = np.zeros(self.coder.codec.frame_samples - len(self._carry), np.int16)
            self._carry = np.concatenate([self._carry, pad])
            self.play(np.zeros(0, np.int16), mark)

    def clear(self) -> None:
        """Drop every queued frame (barge-in)."""
        self._queue.clear()
        self._carry = np.zeros(0, np.int16)

    @property
    def rate(self) -> int:
        """The sample rate of the call's audio, both ways (8 kHz G.711, 16 kHz G.722)."""
        return self.coder.codec.rate

    @property
    def queued_ms(self) -> int:
        return len(self._queue) * 20

    def send_digits(self, digits: str) -> None:
        """Queue keypad digits as RFC 4733 events, sent in order from the next tick on. Raises
        :class:`SipError`: ``invalid_dtmf`` for keys that do not exist (or too many),
        ``dtmf_not_negotiated`` when the peer did not offer telephone-event, ``dtmf_busy`` when
        :data:`MAX_QUEUED_EVENTS` would be passed; nothing is queued then."""
        if self.media.telephone_event is None:
            raise SipError(
                "the peer did not offer telephone-event (RFC 4733)", code="dtmf_not_negotiated"
            )
        queued: list[tuple[dtmf.Event, bool]] = []
        for digit in dtmf.check_digits(digits):
            events = dtmf.packets(digit)
            queued += [(e, i == len(events) - 1) for i, e in enumerate(events)]
        if len(self._digits) + len(queued) > MAX_QUEUED_EVENTS:
            raise SipError(
                f"{len(self._digits)} keypad packets are still waiting to go out",
                code="dtmf_busy",
            )
        self._digits.extend(queued)

    @property
    def digits_pending(self) -> bool:
        """Whether keypad events are still waiting to go out."""
        return bool(self._digits) or self._event_start is not None

    async def _send_loop(self) -> None:
        start, ticks = self.clock.now(), 0
        while True:
            ticks += 1
            self._tick()
            await self.clock.sleep_until(start + ticks * FRAME_S)

    def _tick(self) -> None:
        if self._digits:
            self._send_event(*self._digits.popleft())
            return
        frame, mark = self._queue.popleft() if self._queue and not self.held() else (None, None)
        silence = np.zeros(self.coder.codec.frame_samples, np.int16)  # (G.722 keeps state)
        payload = self.coder.encode(silence if frame is None else frame)
        packet = self.packetizer.packet(payload)
        sent = self._send(packet.encode())
        if sent and frame is not None and self.on_frame is not None:
            self.on_frame(frame)
        if mark is not None:
            self.on_sent(mark)

    def _send_event(self, event: dtmf.Event, last: bool) -> None:
        p, te = self.packetizer, self.media.telephone_event
        assert te is not None
        first = self._event_start is None
        if first:
            self._event_start, self._event_ticks = p.timestamp, 0
        assert self._event_start is not None
        self._send(p.event(event.encode(), self._event_start, marker=first, pt=te).encode())
        self._event_ticks += 1
        if last:  # (the end's repeats took ticks too: the audio after goes on from now)
            p.skip(self._event_ticks * rtp.FRAME_TICKS)
            self._event_start = None

    def _send(self, data: bytes) -> bool:
        if self._transport is None or not self.sending or self._transport.is_closing():
            return False
        self._transport.sendto(data, self.receiver.destination)
        self.sent_packets += 1
        return True
