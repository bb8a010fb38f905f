"""``voice bench``: a voice-agent benchmark harness that measures from the caller's side.

Synthetic callers (espeak-ng voices, not the agent's) talk to the server over the OpenAI Realtime
protocol or as Twilio Media Streams, in real time, with mid-sentence pauses and barge-ins; N of
them at once for each concurrency level; each named server configuration in its own server.
See ``benchmarks/README.md``. Modules:

- ``scenarios``: what the callers say; ``audio``: speech, loudness, chunks
- ``clients``: the Realtime and Twilio callers; ``runner``: turns, conversations
- ``timeline``: every measurement, from what one caller saw (pure)
- ``stats``: percentiles, summaries, sessions per core, ratios
- ``server``: the server under test and its configurations; ``bench``: one whole run
- ``report`` / ``html``: text, JSON and the offline HTML report; ``cli``: the command
"""
