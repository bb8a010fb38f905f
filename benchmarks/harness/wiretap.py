"""A tap on the loopback wire: every UDP datagram that crosses ``lo``, once, stamped by the kernel.

A caller that is a separate program (baresip) cannot stamp its own packets on the harness's
clock, so the harness watches the wire instead: a raw ``AF_PACKET`` socket bound to ``lo``
(root, or ``CAP_NET_RAW``). Loopback shows each packet twice, leaving and arriving; a small BPF
program keeps only the arriving copy of IPv4 UDP, so user space sees each datagram once. Each one
carries the kernel's receive time (``SO_TIMESTAMPNS``, the real-time clock), moved onto
``time.perf_counter()``'s clock at reading (the offset between the two clocks read then), so the
stamps are those of the wire, not of when this process got round to reading them, and compare
with the harness's other stamps.

:class:`CallWire` is the sans-I/O part: fed datagrams, it learns a call's RTP ports from the SDP
of its SIP messages (the phone's offer, the server's answer) and sorts that call's G.711 packets
into what the phone sent (uplink) and what it was sent (downlink), decoded and judged audible.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from transports import g711
from transports.sip import rtp, sdp
from transports.sip.message import SipError, parse

from .audio import is_loud

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
IPPROTO_UDP = 17
PACKET_HOST = 0
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
SNAPLEN = 65535
RECEIVE_BUFFER = 4 * 1024 * 1024
"""Bytes the kernel may hold for the tap while the event loop is busy (about 20 s of a call)."""
DECODERS: dict[int, Callable[[bytes], np.ndarray]] = {0: g711.ulaw_decode, 8: g711.alaw_decode}
NEEDS = "root (CAP_NET_RAW)"


class WiretapError(OSError):
    """The tap could not be opened (not root, no loopback interface)."""


def _bpf(*program: tuple[int, int, int, int]) -> bytes:
    return b"".join(
        struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF) for code, jt, jf, k in program
    )


# ld [ancillary]; jeq; ldb [9]; ret — classic BPF, run on the IP header (a SOCK_DGRAM tap)
_LD_W_ABS, _LD_B_ABS, _JEQ_K, _RET_K = 0x20, 0x30, 0x15, 0x06
FILTER = _bpf(
    (_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PROTOCOL),
    (_JEQ_K, 0, 5, ETH_P_IP),
    (_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PKTTYPE),
    (_JEQ_K, 0, 3, PACKET_HOST),  # the arriving copy only
    (_LD_B_ABS, 0, 0, 9),  # the IPv4 protocol field
    (_JEQ_K, 0, 1, IPPROTO_UDP),
    (_RET_K, 0, 0, SNAPLEN),
    (_RET_K, 0, 0, 0),
)
"""IPv4, arriving, UDP: everything else stays in the kernel."""


@dataclass(slots=True, frozen=True)
class Datagram:
    t: float
    """``time.perf_counter()`` clock: when the packet crossed the wire."""
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def parse_udp(packet: bytes, t: float) -> Datagram | None:
    """An IPv4 packet (from its IP header on) → the UDP datagram it carries, or None (not
    IPv4/UDP, a fragment, truncated)."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != IPPROTO_UDP:
        return None
    header = (packet[0] & 0x0F) * 4
    flags_fragment = struct.unpack_from("!H", packet, 6)[0]
    if flags_fragment & 0x3FFF:  # more fragments, or an offset: not a whole datagram
        return None
    if len(packet) < header + 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", packet, header)
    src = socket.inet_ntoa(packet[12:16])
    dst = socket.inet_ntoa(packet[16:20])
    payload = packet[header + 8 : header + max(8, length)]
    return Datagram(t, (src, sport), (dst, dport), payload)


def available() -> str | None:
    """None if a tap can be opened here, else why not."""
    try:
        sock = _open("lo")
    except WiretapError as exc:
        return str(exc)
    sock.close()
    return None


def _open(interface: str) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    except PermissionError as exc:
        raise WiretapError(
            f"timing a baresip call taps the loopback wire with a raw AF_PACKET socket,"
            f" which needs {NEEDS}: {exc}"
        ) from exc
    try:
        _attach_filter(sock)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((interface, ETH_P_ALL))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise WiretapError(f"cannot tap {interface!r}: {exc}") from exc
    return sock


def _attach_filter(sock: socket.socket) -> None:
    """Attach :data:`FILTER` (``struct sock_fprog`` points at it; the kernel copies it)."""
    program = ctypes.create_string_buffer(FILTER, len(FILTER))
    fprog = struct.pack("HL", len(FILTER) // 8, ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive time on the ``perf_counter`` clock (now, without one)."""
    now = time.perf_counter()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanos = struct.unpack_from("qq", data)
            return now - (time.time() - (seconds + nanos / 1e9))
    return now


class Wiretap:
    """Every UDP datagram on ``interface`` goes to ``on_datagram`` (in the event loop, as it is
    read). Use as ``async with``; raises :class:`WiretapError` when it cannot open."""

    def __init__(self, on_datagram: Callable[[Datagram], None], interface: str = "lo") -> None:
        self.on_datagram = on_datagram
        self.interface = interface
        self.seen = 0
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Wiretap:
        self._sock = _open(self.interface)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._drain)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    def _drain(self) -> None:
        """Read what the kernel holds (the reader callback)."""
        assert self._sock is not None
        space = socket.CMSG_SPACE(16)
        while True:
            try:
                packet, ancillary, _, _ = self._sock.recvmsg(SNAPLEN, space)
            except (BlockingIOError, InterruptedError):
                return
            datagram = parse_udp(packet, _stamp(ancillary))
            if datagram is not None:
                self.seen += 1
                self.on_datagram(datagram)


@dataclass(slots=True, frozen=True, eq=False)
class RtpSeen:
    """One G.711 packet of the call, decoded."""

    t: float
    timestamp: int
    audio: np.ndarray
    loud: bool

    @property
    def samples(self) -> int:
        return len(self.audio)


class CallWire:
    """One SIP call's media, picked out of the wire: ``phone`` is the softphone's SIP address;
    the RTP ports come from the SDP bodies it sends and receives. ``uplink`` gets what the phone
    sent, ``downlink`` what it was sent (each packet once, G.711 only)."""

    def __init__(
        self,
        phone: tuple[str, int],
        uplink: Callable[[RtpSeen], None],
        downlink: Callable[[RtpSeen], None],
    ) -> None:
        self.phone = phone
        self.uplink, self.downlink = uplink, downlink
        self.phone_rtp: tuple[str, int] | None = None
        self.server_rtp: tuple[str, int] | None = None

    def feed(self, d: Datagram) -> None:
        if d.src == self.phone or d.dst == self.phone:
            self._signalling(d)
        elif self.phone_rtp is None or self.server_rtp is None:
            return
        elif d.src[1] == self.phone_rtp[1] and d.dst[1] == self.server_rtp[1]:
            self._media(d, self.uplink)
        elif d.src[1] == self.server_rtp[1] and d.dst[1] == self.phone_rtp[1]:
            self._media(d, self.downlink)

    def _signalling(self, d: Datagram) -> None:
        try:
            message = parse(d.payload)
            if not message.body or "sdp" not in (message.get("Content-Type") or "").lower():
                return
            offer = sdp.parse_offer(message.body)
        except SipError:
            return
        where = (offer.address, offer.port)
        if d.src == self.phone:
            self.phone_rtp = where
        else:
            self.server_rtp = where

    def _media(self, d: Datagram, to: Callable[[RtpSeen], None]) -> None:
        try:
            packet = rtp.RtpPacket.parse(d.payload)
        except SipError:
            return
        decode = DECODERS.get(packet.payload_type)
        if decode is None:  # RTCP, RFC 4733 events, comfort noise
            return
        samples = decode(packet.payload)
        to(RtpSeen(d.t, packet.timestamp, samples, is_loud(samples)))
