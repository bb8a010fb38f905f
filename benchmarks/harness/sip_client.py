"""The SIP caller: ``voice bench --protocol sip`` calls the server's SIP agent like a softphone.

It INVITEs ``sip:agent@HOST:PORT`` over UDP loopback with a PCMU offer, ACKs the 200, then its
microphone streams 20 ms PCMU RTP packets, paced in real time like every caller's; each RTP
packet of the agent's reply is stamped as it arrives (an ``audio`` event, audible or not). A
phone line has no reply ids,
marks or transcripts: a reply is a burst of audible audio, a barge-in ends where that audio
stops, as for the Twilio caller. The call ends with BYE (either side).

Nor has it Twilio's ``clear``, but a cut is heard all the same (:func:`cut_short`): the agent
sends a steady stream, its audio or, with nothing queued, digital silence; a reply that ends
has its last frame padded with zeros, a pause between clauses ends quiet, while a barge-in's
cleared queue stops the audio mid-speech. Such a stop followed by :data:`CUT_SILENCE_S` of
silence is recorded as a ``clear`` event at the stop (a reply held for a moment and resumed is
not), so the report counts SIP cut-offs (barge-ins, and replies cut off in silence) as it does
Twilio's.

On a speakerphone (``voice bench --echo``, :class:`~.echo.Speakerphone`) the phone plays each
packet of the agent as it arrives (what a phone's jitter buffer does on loopback) and its
microphone hears that again, delayed and quieter, mixed into what the caller says. SIP has no
``clear``: when the agent stops, its packets become silence, and so does the echo.

Every message is made and read with the server's own sans-I/O SIP codecs
(``transports/sip``: message, dialog, SDP, RTP, G.711), which the tests check against baresip
and SIPp, so the caller speaks the dialect real phones do.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

import numpy as np

from transports import g711
from transports.sip import rtp, sdp
from transports.sip.dialog import Dialog, State, new_tag
from transports.sip.message import (
    Request,
    Response,
    SipError,
    host_port,
    parse,
    response_to,
    uri_of,
)

from .audio import is_loud
from .clients import CONNECT_TIMEOUT_S, Call
from .timeline import AUDIO, CLEAR, ERROR, SIP, Ev

SIP_RATE = 8_000
HOST = "127.0.0.1"
RETRANSMIT_S = 0.5
"""The INVITE is sent again this often until a response comes (UDP; RFC 3261's timer A)."""
TAIL = 80
"""The last 10 ms of a frame: loud there, the audio was cut mid-speech."""
PADDING = 8
"""Trailing zero samples that mark a reply's last frame (padded by the server)."""
CUT_SILENCE_S = 0.4
"""Silence after a cut that makes it a ``clear`` (sooner, the reply was only held: it goes on)."""


def cut_short(before: np.ndarray | None, frame: np.ndarray) -> bool:
    """Whether the agent's audio was cut off between two frames: ``frame`` is digital silence
    (what the server sends with nothing queued) and ``before`` ends loud and unpadded."""
    if before is None or frame.any() or not before[-PADDING:].any():
        return False
    return is_loud(before[-TAIL:])


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, call: SipCaller, media: bool) -> None:
        self.call, self.media = call, media

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = time.perf_counter()
        if self.media:
            self.call.rtp_received(data, now)
        else:
            self.call.sip_received(data, addr)


class SipCaller(Call):
    """A softphone on loopback UDP calling ``url`` (``sip:agent@127.0.0.1:5060``)."""

    protocol = SIP
    rate = SIP_RATE
    phone_line = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.agent = host_port(url)
        self.dialog: Dialog | None = None
        self.remote_rtp: tuple[str, int] | None = None
        self.packetizer = rtp.Packetizer(0)
        self._signalling: asyncio.DatagramTransport | None = None
        self._media: asyncio.DatagramTransport | None = None
        self._via = ""
        self._responses: asyncio.Queue[Response] = asyncio.Queue(maxsize=64)
        self._requests: asyncio.Queue[Request] = asyncio.Queue(maxsize=64)
        self._invite: Request | None = None
        self._last_frame: np.ndarray | None = None
        self._cut: tuple[int, float, int] | None = None
        """A cut being confirmed: where its ``clear`` goes in :attr:`events`, when, and the
        silent samples since."""

    # ------------------------------------------------------------ lifecycle

    async def _connect(self) -> None:
        """INVITE, wait for the answer, ACK it. Any failure is a :class:`ConnectionError` (what
        the runner counts as a failed call), and leaves no socket open and no call up."""
        try:
            await self._invite_agent()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self._hang_up()
            await self._disconnect()
            if isinstance(exc, SipError):
                raise ConnectionError(f"SIP: {exc}") from exc
            raise

    async def _invite_agent(self) -> None:
        loop = asyncio.get_running_loop()
        self._signalling, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self, False), local_addr=(HOST, 0)
        )
        self._media, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self, True), local_addr=(HOST, 0)
        )
        port = self._signalling.get_extra_info("sockname")[1]
        rtp_port = self._media.get_extra_info("sockname")[1]
        self._via = f"{HOST}:{port}"
        self.dialog = Dialog(
            call_id=f"{secrets.token_hex(10)}@{HOST}",
            local_tag=new_tag(),
            local_uri=f"sip:bench@{self._via}",
            remote_uri=self.url,
            remote_tag=None,
            remote_target=self.url,
            local_contact=f"sip:bench@{self._via}",
            state=State.CALLING,
        )
        self._invite = self.dialog.request(
            "INVITE",
            self._via,
            headers=[("Content-Type", "application/sdp")],
            body=sdp.offer(HOST, rtp_port, secrets.randbelow(2**31), codecs=(0,)),
        )
        response = await asyncio.wait_for(self._ring(self._invite), CONNECT_TIMEOUT_S)
        assert self.dialog is not None
        self.dialog.remote_tag = response.to_tag
        if 200 <= response.status < 300 and (contact := response.get("Contact")):
            self.dialog.remote_target = uri_of(contact)
        self._ack(response)
        if not 200 <= response.status < 300:
            raise ConnectionError(f"the agent answered {response.status} {response.reason}")
        self.dialog.state = State.CONFIRMED  # (a BYE on the way out from here on)
        answer = sdp.parse_offer(response.body)
        if 0 not in answer.payloads:
            raise ConnectionError(f"the agent did not take PCMU: {answer.payloads}")
        self.remote_rtp = (answer.address, answer.port)

    async def _ring(self, invite: Request) -> Response:
        """Send the INVITE (again every :data:`RETRANSMIT_S` until an answer) until its final
        response."""
        heard = False
        while True:
            if not heard:
                self._send_sip(invite)
            try:
                response = await asyncio.wait_for(self._responses.get(), RETRANSMIT_S)
            except TimeoutError:
                continue
            if response.cseq[1] != "INVITE":
                continue
            heard = True
            if response.status >= 200:
                return response

    def _ack(self, response: Response) -> None:
        assert self.dialog is not None and self._invite is not None
        ack = self.dialog.request("ACK", self._via, cseq=self._invite.cseq[0])
        if not 200 <= response.status < 300:  # (a non-2xx ACK keeps the INVITE's branch)
            ack.set("Via", self._invite.need("Via"))
        self._send_sip(ack)

    async def _hang_up(self) -> None:
        if self.dialog is None or self.closed is not None or self.dialog.state != State.CONFIRMED:
            return
        self.dialog.state = State.ENDED
        bye = self.dialog.request("BYE", self._via)
        self._send_sip(bye)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while (await self._responses.get()).cseq[1] != "BYE":
                    pass

    async def _disconnect(self) -> None:
        for transport in (self._media, self._signalling):
            if transport is not None:
                transport.close()

    def vanish(self) -> None:
        if self._tasks:
            self._tasks[1].cancel()
        if self.dialog is not None:
            self.dialog.state = State.ENDED  # no BYE: the server finds out from the silence
        for transport in (self._media, self._signalling):
            if transport is not None:
                transport.abort()

    # ------------------------------------------------------------ signalling

    def _send_sip(self, message: Request | Response) -> None:
        if self._signalling is not None and not self._signalling.is_closing():
            self._signalling.sendto(message.encode(), self.agent)

    def sip_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = parse(data)
        except SipError as exc:
            self.add(Ev(time.perf_counter(), ERROR, text=f"bad SIP from the agent: {exc}"))
            return
        queue = self._responses if isinstance(message, Response) else self._requests
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(message)  # type: ignore[arg-type]

    async def _read(self) -> None:
        """Answer the agent's requests; a BYE ends the call. (RTP arrives in
        :meth:`rtp_received`; a retransmitted 200 is ACKed again.)"""
        try:
            while True:
                request = await self._requests.get()
                if request.method == "ACK":
                    continue
                self._send_sip(response_to(request, 200))
                if request.method == "BYE":
                    if self.dialog is not None:
                        self.dialog.state = State.ENDED
                    self.closed = "the agent hung up (BYE)"
                    return
        finally:
            self._new.set()

    # ------------------------------------------------------------ media

    async def _send_audio(self, chunk: np.ndarray) -> None:
        if self._media is None or self.remote_rtp is None or self._media.is_closing():
            return
        if self.phone is not None:
            chunk = self.phone.mix(chunk, time.perf_counter())
        packet = self.packetizer.packet(g711.ulaw_encode(chunk))
        self._media.sendto(packet.encode(), self.remote_rtp)

    def rtp_received(self, data: bytes, now: float) -> None:
        try:
            packet = rtp.RtpPacket.parse(data)
        except SipError:
            return  # (RTCP and the like)
        if packet.payload_type != 0:
            return
        samples = g711.ulaw_decode(packet.payload)
        self._follow_cut(samples, now)
        self._last_frame = samples
        self.add(Ev(now, AUDIO, loud=is_loud(samples)))
        if self.phone is not None:
            self.phone.play(samples, now)

    def _follow_cut(self, samples: np.ndarray, now: float) -> None:
        """A cut becomes a ``clear`` (placed where it happened) once the silence after it has
        lasted :data:`CUT_SILENCE_S`; audio before then was a hold, not a cut."""
        if cut_short(self._last_frame, samples):
            self._cut = (len(self.events), now, 0)
        if self._cut is None:
            return
        index, at, silent = self._cut
        silent += len(samples)
        if samples.any():
            self._cut = None
        elif silent >= CUT_SILENCE_S * SIP_RATE:
            self._cut = None
            self.events.insert(index, Ev(at, CLEAR))
            self._new.set()
        else:
            self._cut = (index, at, silent)
