"""The OpenAI Realtime protocol (GA event names), independent of the socket that carries it.

``formats.py`` — audio formats; ``validate.py`` — reading client events; ``config.py`` — the
session object and ``session.update``; ``connection.py`` — one client's protocol state, mapping
client events onto a session and session events onto server events.
"""
