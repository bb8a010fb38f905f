"""``voice bench``: a voice-agent benchmark harness that measures from the caller's side.

Synthetic callers (espeak-ng voices, not the agent's) talk to the server over the OpenAI Realtime
protocol (over a WebSocket or WebRTC) or as Twilio Media Streams, in real time, with mid-sentence
pauses and barge-ins; N of them at once for each concurrency level; each named server
configuration in its own server.
See ``benchmarks/README.md``. Modules:

- ``scenarios``: what the callers say; ``audio``: speech, loudness, chunks
- ``clients``: the Realtime (plain or through the ``openai`` SDK) and Twilio callers;
  ``webrtc_client``: the Realtime caller over WebRTC (aiortc); ``runner``: turns, conversations
- ``timeline``: every measurement, from what one caller saw (pure)
- ``stats``: percentiles, summaries, sessions per core, ratios; ``table``: the summary table
- ``server``: the server under test and its configurations; ``machine``: the host;
  ``bench``: one whole run; ``protocols``: several protocols in one report; ``netns``: the
  private network a WebRTC run needs
- ``report`` / ``html``: text, JSON and the offline HTML report; ``cli``: the command

Imports go one way, in that order's reverse (``cli`` → ``bench`` → ``runner`` → ``clients`` …,
``report`` → ``html`` → ``table`` → ``stats``); ``benchmarks.realtime_latency`` and
``benchmarks.webrtc_latency`` are presets built from these parts.
"""
