"""Transports: wire protocols in and out of the session core.

``realtime/`` is the OpenAI Realtime protocol (sans-I/O: JSON events in, JSON events out) and
``websocket.py`` carries it over a WebSocket at ``/v1/realtime``; ``g711.py`` holds the telephone
codecs. Each adapter only maps its wire onto :class:`pipeline.session.Session` calls and events.
"""
