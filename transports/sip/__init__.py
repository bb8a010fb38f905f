"""SIP: a user agent on UDP, so a softphone, a PBX or a trunk calls the agent directly.

The protocol is sans-I/O codecs, tested with bytes: ``message.py`` (SIP messages),
``transaction.py`` (timers, retransmissions), ``dialog.py`` (a call's state as data), ``sdp.py``
(offer/answer), ``rtp.py`` (packets, jitter buffer, the receive filter), ``dtmf.py`` (RFC 4733)
and ``digest.py`` (authentication). The asyncio layer over them: ``agent.py`` (the UDP endpoint,
every dialog), ``call.py`` (one call onto one session), ``media.py`` (a call's RTP socket and
pacing), ``outbound.py`` (calls out), ``register.py`` (staying registered).
"""
