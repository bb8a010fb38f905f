"""Hand-off: a session's replies (and, when the upstream detects turns, its listening) done by
an end-to-end realtime model over the network instead of the local cascade.

``base.py`` — the engine names, the settings and the typed upstream events (the seam);
``openai_realtime.py`` and ``gemini_live.py`` — sans-I/O codecs of each upstream protocol
(text frames in, typed events out; requests in, text frames out); ``relay.py`` — the one
I/O layer: the upstream WebSocket, its timeouts, and the mapping of its events onto the
session; ``remote_reply.py`` — one upstream response played like a cascade reply;
``policy.py`` and ``tools.py`` — switching by a keypad key or a tool the model calls.

The session keeps the conversation either way (messages, function calls, their outputs): a
switch of engine carries it over, and the client sees the same events whatever the engine.
"""
