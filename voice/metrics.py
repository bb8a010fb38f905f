"""The server's Prometheus metrics (``GET /metrics``), one registry per :class:`VoiceServer`.

Counters and histograms are fed by the session events (:meth:`ServerMetrics.observe` is every
session's observer) and by the server's admission decisions; gauges of what is queued right now
are read when Prometheus scrapes (:meth:`ServerMetrics.watch`)::

    voice_sessions_active{transport}        sessions open now (websocket, webrtc, twilio)
    voice_sessions_total{transport}         sessions ever opened
    voice_sessions_refused_total{reason}    connections refused (capacity, draining, ...)
    voice_turn_stage_seconds{stage}         a turn's milestones after the caller stopped speaking
    voice_turn_voice_to_voice_seconds       end of the caller's speech → first reply audio sent
    voice_turn_overhead_seconds             the framework's own share of that wait
    voice_responses_total{status}           responses ended (completed, incomplete, cancelled, ...)
    voice_barge_ins_total                   replies the caller interrupted once they were audible
    voice_errors_total{code}                error events the sessions sent their clients
    voice_model_load_seconds{engine}        how long each engine took to load
    voice_model_warm_up_seconds{engine}     ... and to warm up
    voice_session_events_pending            events queued for the transports, all sessions
    voice_asr_jobs_waiting                  transcriptions waiting for an ASR worker
    voice_webrtc_calls{state}               WebRTC calls connecting or connected
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from pipeline import messages as m
from pipeline.metrics import REPORTED
from pipeline.session import Session

TRANSPORTS = ("websocket", "webrtc", "twilio")
STATUSES = ("completed", "incomplete", "cancelled", "failed")
STAGES = tuple(name for name in REPORTED if name != "speech_end")
"""The milestones of :func:`pipeline.metrics.report`, each after the turn's origin (the end of
the caller's speech, or the request of a ``response.create``)."""
LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge(
            "voice_sessions_active", "Sessions open now.", ["transport"], registry=r
        )
        self.sessions = Counter(
            "voice_sessions", "Sessions opened since the start.", ["transport"], registry=r
        )
        self.refused = Counter(
            "voice_sessions_refused", "Connections refused, by reason.", ["reason"], registry=r
        )
        self.stages = Histogram(
            "voice_turn_stage_seconds",
            "Seconds from a turn's origin (the end of the caller's speech, or the request) to"
            " each milestone.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.voice_to_voice = Histogram(
            "voice_turn_voice_to_voice_seconds",
            "Seconds from the end of the caller's speech to the first reply audio sent.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "voice_turn_overhead_seconds",
            "Seconds of a turn's wait spent in queues and hand-offs between stages.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.responses = Counter(
            "voice_responses", "Responses ended, by status.", ["status"], registry=r
        )
        self.barge_ins = Counter(
            "voice_barge_ins", "Replies interrupted by the caller once audible.", registry=r
        )
        self.errors = Counter(
            "voice_errors", "Error events sent to clients, by code.", ["code"], registry=r
        )
        self.model_load = Gauge(
            "voice_model_load_seconds", "Seconds each engine took to load.", ["engine"], registry=r
        )
        self.model_warm_up = Gauge(
            "voice_model_warm_up_seconds",
            "Seconds each engine took to warm up.",
            ["engine"],
            registry=r,
        )
        for transport in TRANSPORTS:  # every family shows its series from the first scrape
            self.sessions_active.labels(transport)
            self.sessions.labels(transport)
        for status in STATUSES:
            self.responses.labels(status)
        for stage in STAGES:
            self.stages.labels(stage)
        self._transport: dict[str, str] = {}

    # ---------------------------------------------------------------- sessions

    def opened(self, session_id: str, transport: str) -> None:
        """A session counts from now until its :class:`~pipeline.messages.SessionClosed`."""
        if session_id in self._transport:
            return
        self._transport[session_id] = transport
        self.sessions.labels(transport).inc()
        self.sessions_active.labels(transport).inc()

    def refuse(self, reason: str) -> None:
        self.refused.labels(reason).inc()

    def observe(self, session: Session, event: m.SessionEvent) -> None:
        """Every session's observer (see :data:`pipeline.session.Observer`)."""
        if isinstance(event, m.TurnMetrics):
            self._turn(event.marks)
        elif isinstance(event, m.ReplyDone):
            self.responses.labels(event.status).inc()
            heard = event.output_started  # a reply cancelled before it was heard is no barge-in
            if event.status == "cancelled" and event.reason == "turn_detected" and heard:
                self.barge_ins.inc()
        elif isinstance(event, m.SessionError | m.TranscriptionFailed):
            self.errors.labels(event.code).inc()
        elif isinstance(event, m.SessionClosed):
            transport = self._transport.pop(session.id, None)
            if transport is not None:
                self.sessions_active.labels(transport).dec()

    def _turn(self, marks: Mapping[str, float | None]) -> None:
        for stage in STAGES:
            ms = marks.get(stage)
            if ms is not None:
                self.stages.labels(stage).observe(max(0.0, ms) / 1000.0)
        sent = marks.get("first_audio_sent")
        if marks.get("speech_end") is not None and sent is not None:
            self.voice_to_voice.observe(max(0.0, sent) / 1000.0)
        overhead = marks.get("overhead")
        if overhead is not None:
            self.overhead.observe(overhead / 1000.0)

    # ---------------------------------------------------------------- the server's state

    def models(
        self, load_seconds: Mapping[str, float], warm_up_seconds: Mapping[str, float]
    ) -> None:
        for engine, seconds in load_seconds.items():
            self.model_load.labels(engine).set(seconds)
        for engine, seconds in warm_up_seconds.items():
            self.model_warm_up.labels(engine).set(seconds)

    def watch(
        self,
        sessions: Mapping[str, Session],
        calls_connected: Callable[[], tuple[int, int]],
        asr_waiting: Callable[[], int] | None,
    ) -> None:
        """Queue depths read at scrape time. ``calls_connected``: (connecting, connected) WebRTC
        calls; ``asr_waiting``: the ASR's count of jobs waiting (None when it keeps none)."""
        r = self.registry
        pending = Gauge(
            "voice_session_events_pending",
            "Events queued for the transports, all sessions together.",
            registry=r,
        )
        pending.set_function(lambda: sum(s.pending_events for s in list(sessions.values())))
        calls = Gauge("voice_webrtc_calls", "WebRTC calls, by state.", ["state"], registry=r)
        calls.labels("connecting").set_function(lambda: calls_connected()[0])
        calls.labels("connected").set_function(lambda: calls_connected()[1])
        if asr_waiting is not None:
            waiting = Gauge(
                "voice_asr_jobs_waiting",
                "Transcription jobs waiting for an ASR worker, all sessions together.",
                registry=r,
            )
            waiting.set_function(asr_waiting)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
