"""The server: one aiohttp application over the engines loaded once (``engines.py``).

Routes: ``GET /`` (the web client), ``GET /v1/realtime`` (Realtime over WebSocket),
``POST /v1/realtime/calls`` (Realtime over WebRTC), ``GET /v1/twilio/media-stream`` (Twilio Media
Streams), ``POST /v1/realtime/client_secrets`` (a browser's short-lived credential; who may
connect to what: ``auth.py``), ``GET /healthz`` (alive), ``GET /readyz`` (taking sessions:
``health.py``), ``GET /metrics`` (Prometheus: ``metrics.py``). Sessions beyond
``server.max_sessions``, or while the server drains (``drain.py``), are refused with HTTP 503;
every ended session's transcript is kept.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiortc import RTCIceServer

from pipeline.endpointing import EndpointSettings
from pipeline.engines import Engines, GenerationOptions
from pipeline.engines.tools import TOOL_CHOICES
from pipeline.errors import ConfigError, ProtocolError
from pipeline.handoff.base import check_engine
from pipeline.handoff.policy import dtmf_switch
from pipeline.handoff.relay import opener
from pipeline.reply import ReplySettings
from pipeline.session import Session, SessionLimits, SessionSettings, Tuning
from pipeline.tools import ToolRegistry
from pipeline.turns import TurnSettings
from transports.realtime.config import RealtimeConfig
from transports.realtime.connection import RealtimeConnection
from transports.realtime.input_config import recognizer_languages
from transports.realtime_request import read_offer, wants_extensions
from transports.sdp import check_offer
from transports.sip.agent import SipAgent, SipOptions
from transports.sip.tcp import TcpSettings
from transports.twilio import refuse_twilio, serve_twilio
from transports.webrtc import WebRtcCall, WebRtcOptions
from transports.websocket import serve_realtime

from .auth import Gate, Principal, exposure_refusal, principal_of
from .call_control import CallControl
from .config import Config
from .drain import ShutdownSignals, drain
from .engines import close_engines, load_engines, warm_up
from .health import Admission, refusal, unready
from .metrics import CONTENT_TYPE, ServerMetrics
from .sip_calls import SipCalls, auth_users, place_call_route, registration_settings
from .store import SessionRecorder, open_store
from .store.api import add_routes as add_store_routes
from .tools import load_tools

log = logging.getLogger("voice.server")


class MalformedRequests(logging.Filter):
    """aiohttp logs every malformed HTTP request at ERROR with a traceback: a client's mistake,
    not the server's. Such a record becomes one INFO line saying what was wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 400) < 500:
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            what = " ".join(str(exc.message).replace("^", "").split())[:200]
            record.msg, record.args = "malformed HTTP request from %s: %s", (remote, what)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_malformed_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server_log.filters):
        server_log.addFilter(MalformedRequests())


WEB_CLIENT = Path(__file__).resolve().parent.parent / "web_client"


def server_tools(config: Config, tools: ToolRegistry | None = None) -> ToolRegistry:
    """The tools given, else those of ``server.tools``; ``llm.tool_choice`` must name one of
    them (or be a keyword). Raises :class:`ConfigError`."""
    if tools is None:
        tools = load_tools(config.server.tools, default_timeout_s=config.limits.tool_timeout)
    choice = config.llm.tool_choice
    if choice not in TOOL_CHOICES and choice not in tools:
        raise ConfigError(
            f"llm.tool_choice {choice!r}: use auto, none, required or one of the server's"
            f" tools ({', '.join(s.name for s in tools.specs()) or 'none loaded'})"
        )
    return tools


class VoiceServer:
    def __init__(self, config: Config, engines: Engines, tools: ToolRegistry | None = None) -> None:
        self.config = config
        self.engines = engines
        self.tools = server_tools(config, tools)
        """The server's own tools (``server.tools``): every session's model may call them."""
        self.sessions: dict[str, Session] = {}
        self.ended: OrderedDict[str, dict[str, object]] = OrderedDict()
        self._end_waiters: dict[str, list[asyncio.Future[dict[str, object]]]] = {}
        self.calls: dict[str, WebRtcCall] = {}
        self.gate = Gate(config)
        """Who may connect (``auth.py``): API keys, client secrets, origins, Twilio's signature."""
        self.owners: weakref.WeakKeyDictionary[Session, str] = weakref.WeakKeyDictionary()
        """The API key (fingerprint) each Realtime session was opened with."""
        self.draining = False
        """Set by :func:`voice.drain.drain`: new sessions are refused."""
        self.warm = True
        """The models are loaded and warmed up (``run_server`` clears it while warming up)."""
        self.metrics = ServerMetrics()
        asr_waiting = getattr(engines.asr, "waiting", None)
        self.metrics.watch(self.sessions, self._calls_by_state, asr_waiting)
        self.voices = config.tts.voice_table()
        """The voice names a Realtime client may choose → the server voice of each."""
        config.vad.backchannel_settings()  # (a bad vocabulary or bound fails here, not per call)
        config.handoff.check()
        config.webrtc.check()
        self.handoff = config.handoff.settings()
        self.open_remote = opener(self.handoff)
        self.dtmf_keys = config.handoff.dtmf_keys()
        """Opens a session's remote engine (``pipeline.handoff``; keys stay on the server)."""
        st = config.store
        self.store = (
            open_store(
                st.url,
                config.server.data_dir,
                max_queued=st.max_queued,
                record_audio=st.record_audio,
                timeout=st.timeout,
            )
            if st.enabled
            else None
        )
        """Every session's record, written as it happens (``voice/store``); started by start()."""
        self.call_control = CallControl(self)
        """Live calls of every transport: accept/reject/refer/hangup, ``?call_id=``, webhook."""
        self.app = self._routes()
        self.sip: SipAgent | None = None
        """The SIP user agent (``sip.enabled``), started by :meth:`start`."""
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def _routes(self) -> web.Application:
        app = web.Application()
        app.middlewares.append(self.gate.middleware)
        app.router.add_post("/v1/realtime/client_secrets", self._client_secret)
        app.router.add_get("/v1/realtime", self._realtime)
        app.router.add_get("/v1/twilio/media-stream", self._twilio)
        app.router.add_post("/v1/realtime/calls", self._call_create)
        app.router.add_post("/v1/realtime/calls/{call_id}", self._call_reoffer)
        self.call_control.add_routes(app)
        app.router.add_post("/v1/sip/calls", self._sip_call)
        app.router.add_delete("/v1/realtime/calls/{call_id}", self._call_hangup)
        app.router.add_post("/v1/sessions/{session_id}/engine", self._switch_engine)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._index)
        if WEB_CLIENT.is_dir():
            app.router.add_static("/static/", WEB_CLIENT)
        if self.store is not None:
            add_store_routes(app, self.store)
        return app

    def session_settings(self) -> SessionSettings:
        v, p, c = self.config.vad, self.config.pipeline, self.config.llm
        turns = TurnSettings(
            threshold=v.threshold,
            hysteresis=v.hysteresis,
            min_speech_ms=v.min_speech_ms,
            prefix_padding_ms=v.prefix_padding_ms,
            silence_duration_ms=v.silence_duration_ms,
            tentative_silence_ms=v.tentative_silence_ms,
            interrupt_min_speech_ms=v.interrupt_min_speech_ms,
        )
        return SessionSettings(
            instructions=p.instructions,
            turn_detection=turns,
            voice=self.config.tts.voice_name,
            generation=GenerationOptions(
                max_tokens=c.max_tokens, temperature=c.temperature, tool_choice=c.tool_choice
            ),
        )

    def new_session(self, *, lead_ms: int | None = None) -> Session:
        p, lim, v = self.config.pipeline, self.config.limits, self.config.vad
        session = Session(
            self.engines,
            self.session_settings(),
            tools=self.tools,
            observers=[self.metrics.observe],
            reply_settings=ReplySettings(
                frame_ms=p.frame_ms,
                lead_ms=p.lead_ms if lead_ms is None else lead_ms,
                first_clause_chars=p.first_clause_chars,
                min_clause_chars=p.min_clause_chars,
                first_clause_words=p.first_clause_words,
                starved_cut_ms=p.starved_cut_ms,
                starved_cut_behind=p.starved_cut_behind,
                trim_leading_silence=p.trim_leading_silence,
                tts_timeout=self.config.tts.timeout,
            ),
            limits=SessionLimits(
                max_pending_events=lim.max_pending_events,
                max_pending_input_ms=lim.max_pending_input_ms,
                max_input_buffer_s=lim.max_input_buffer_s,
                max_conversation_bytes=lim.max_conversation_bytes,
                asr_timeout=lim.asr_timeout,
                judge_timeout=lim.judge_timeout,
                max_tool_rounds=lim.max_tool_rounds,
                max_out_of_band=lim.max_out_of_band,
                max_session_s=lim.max_session_s,
                idle_s=lim.idle_s,
            ),
            tuning=Tuning(
                early_asr=p.early_asr,
                speculative_reply=p.speculative_reply and p.early_asr,
                reply_beside_judge=p.reply_beside_judge,
                eot_adaptive=v.eot_adaptive and p.early_asr,
                pause_on_onset=v.pause_on_onset,
                hold_threshold=min(max(0.0, v.hold_threshold), 0.99),
                early_pause_db=max(0.0, v.early_pause_db),
                silence_from_loudness_ms=max(0, v.silence_from_loudness_ms),
                backchannel=v.backchannel_settings(),
                interim_asr_ms=max(0, p.interim_asr_ms),
                endpoint=EndpointSettings(
                    complete_ms=v.eot_complete_ms,
                    statement_ms=v.eot_statement_ms,
                    incomplete_ms=v.eot_incomplete_ms,
                    likely_complete=v.eot_llm_complete,
                    unlikely_complete=v.eot_llm_unfinished,
                ),
            ),
        )
        session.open_remote = self.open_remote  # (hand-off: the remote engines configured)
        session.switch_engine(self.config.handoff.engine)
        if self.dtmf_keys:
            session.observers.append(dtmf_switch(self.dtmf_keys))
        return session

    def realtime_config(self, settings: SessionSettings, *, webrtc: bool = False) -> RealtimeConfig:
        """A Realtime connection's view of a session with these settings."""
        return RealtimeConfig(
            model=self.config.server.model_name,
            settings=settings,
            voices=dict(self.voices),
            transcription_model=f"whisper-{self.config.asr.model}",
            max_tokens_cap=max(self.config.llm.max_tokens, 1024),
            fixed_output_rate=48_000 if webrtc else None,
            server_tools=[spec.name for spec in self.tools.specs()],
            engines={"cascade": "", **{n: u.model for n, u in self.handoff.upstreams.items()}},
            transcription_languages=recognizer_languages(
                self.config.asr.model, self.config.asr.language
            ),
        )

    def open_realtime(
        self, *, webrtc: bool = False, extensions: bool = False
    ) -> RealtimeConnection:
        """``extensions``: the client asked for the ``x.voice.*`` events (``x_voice_events=1``)."""
        # WebRTC has its own jitter buffer on the far side: the track's 20 ms pacing is the lead
        session = self.new_session(lead_ms=0 if webrtc else None)
        self._record(session, "webrtc" if webrtc else "websocket")
        config = self.realtime_config(session.settings, webrtc=webrtc)
        if webrtc:
            session.settings.output_rate = 48_000
        else:  # a WebRTC call's session counts once the call connects (_call_connected)
            self.sessions[session.id] = session
            self.metrics.opened(session.id, "websocket")
        return RealtimeConnection(
            session,
            config,
            max_event_bytes=self.config.server.max_event_bytes,
            extensions=extensions,
        )

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        if "call_id" in request.query:  # a watcher of a live call (``call_control.py``)
            return await self.call_control.watch(request)
        extensions = wants_extensions(request)
        self._check_capacity()
        principal = principal_of(request)
        self._check_quota(principal)
        opened: list[Session] = []

        def open_connection() -> RealtimeConnection:
            conn = self.open_realtime(extensions=extensions)
            opened.append(conn.session)
            try:
                self._adopt(conn, principal)
                model = request.query.get("model", "")
                if model and model in conn.config.engines.values():  # a remote engine's model
                    conn.apply_session({"model": model})
            except ProtocolError as exc:
                conn.session.close(f"the client secret's session configuration is refused: {exc}")
            return conn

        try:
            return await serve_realtime(
                request,
                open_connection,
                max_frame_bytes=self.config.server.max_frame_bytes,
                heartbeat=self.config.server.heartbeat_s,
            )
        finally:
            for session in opened:
                self.sessions.pop(session.id, None)
                self._keep_transcript(session)

    async def _twilio(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/twilio/media-stream``: a Twilio Media Streams WebSocket, one session; one
        that arrives while no session is taken is closed at once with the reason (1013)."""
        refused = refusal(self.admission())
        if refused is not None:
            self.metrics.refuse(refused[0])
            return await refuse_twilio(request, refused[1])
        opened: list[Session] = []

        def open_session() -> Session:
            session = self.new_session()
            session.settings.apology = self.config.twilio.apology  # (Twilio has no error event)
            self._record(session, "twilio")
            self.sessions[session.id] = session
            self.metrics.opened(session.id, "twilio")
            opened.append(session)
            return session

        try:
            return await serve_twilio(
                request,
                open_session,
                echo_cancellation=self.config.twilio.echo_cancellation,
                on_start=self.call_control.twilio_started,
            )
        finally:
            for session in opened:
                self.sessions.pop(session.id, None)
                self._keep_transcript(session)

    def _record(self, session: Session, transport: str) -> None:
        if self.store is not None:
            st = self.config.store
            SessionRecorder(
                self.store,
                session,
                transport,
                record_audio=st.record_audio,
                max_audio_s=st.max_audio_s,
            )

    def _keep_transcript(self, session: Session) -> None:
        """The conversation survives the connection: kept in memory and, if configured, on disk."""
        record: dict[str, object] = {
            "session_id": session.id,
            "closed_reason": session.closed_reason,
            "items": session.conversation.transcript(),
        }
        self.ended[session.id] = record
        for waiter in self._end_waiters.pop(session.id, []):
            if not waiter.done():
                waiter.set_result(record)
        while len(self.ended) > self.config.server.transcripts_kept:
            self.ended.popitem(last=False)
        folder = self.config.server.transcript_dir
        if folder:
            try:
                path = Path(folder)
                path.mkdir(parents=True, exist_ok=True)
                tmp = path / f"{session.id}.json.tmp"
                tmp.write_text(json.dumps(record, indent=1))
                tmp.replace(path / f"{session.id}.json")
            except OSError as exc:
                log.error("cannot write the transcript of %s: %s", session.id, exc)

    def admission(self) -> Admission:
        """What decides whether a new session is taken. A session that is closing (its caller
        hung up, its tasks still winding down) no longer counts: a caller who hangs up and
        calls straight back is not refused for their own last call."""
        live = sum(1 for s in self.sessions.values() if s.closed_reason is None)
        return Admission(self.warm, self.draining, live, self.config.server.max_sessions)

    def _check_capacity(self) -> None:
        """Refuse a new session (HTTP 503) while the server is not ready (``health.py``)."""
        refused = refusal(self.admission())
        if refused is not None:
            self.metrics.refuse(refused[0])
            raise web.HTTPServiceUnavailable(text=refused[1])

    def webrtc_options(self) -> WebRtcOptions:
        c = self.config.webrtc
        urls = [u.strip() for u in c.ice_servers.split(",") if u.strip()]
        servers = [
            RTCIceServer(
                urls=u, username=c.ice_username or None, credential=c.ice_credential or None
            )
            for u in urls
        ]
        return WebRtcOptions(
            ice_servers=servers,
            connect_timeout=c.connect_timeout,
            max_queued_ms=c.max_queued_ms,
            echo_cancellation=c.echo_cancellation,
            frame_ms=c.frame_ms,
            dtx=c.dtx,
            dtx_wake=c.dtx_wake,
        )

    async def _call_create(self, request: web.Request) -> web.Response:
        """``POST /v1/realtime/calls``: an SDP offer (with, in the SDK's multipart form, the
        session configuration) in, the SDP answer out (201)."""
        extensions = wants_extensions(request)
        offer = await read_offer(request, max_session_bytes=self.config.server.max_event_bytes)
        try:
            check_offer(offer.sdp)  # before a session exists: a bad offer leaves nothing behind
        except ProtocolError as exc:
            raise web.HTTPBadRequest(text=f"{exc.code}: {exc}") from None
        self._check_capacity()
        self._check_connecting()
        principal = principal_of(request)
        self._check_quota(principal)
        conn = self.open_realtime(webrtc=True, extensions=extensions)
        try:
            self._adopt(conn, principal)
            if offer.session is not None:
                conn.apply_session(offer.session)
        except ProtocolError as exc:
            conn.session.close(f"bad session configuration: {exc}")
            raise web.HTTPBadRequest(text=f"{exc.code}: {exc}") from None
        call = WebRtcCall(conn, self.webrtc_options(), self._call_ended, self._call_connected)
        self.calls[call.id] = call
        try:
            answer = await call.answer(offer.sdp)
        except ProtocolError as exc:
            await call.close(f"bad offer: {exc}")
            raise web.HTTPBadRequest(text=f"{exc.code}: {exc}") from None
        except Exception:
            await call.close("could not answer the offer")
            raise
        try:
            self.call_control.webrtc_answered(call)
        except web.HTTPException:
            await call.close("too many live calls (calls.max_calls)")
            raise
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={"Location": f"/v1/realtime/calls/{call.id}"},
        )

    async def _call_reoffer(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        if call_id not in self.calls:
            raise web.HTTPNotFound(text=f"no call {call_id}")
        raise web.HTTPConflict(
            text=f"call {call_id} already has a session: renegotiation is not supported"
        )

    async def _switch_engine(self, request: web.Request) -> web.Response:
        """``POST /v1/sessions/{session_id}/engine`` ``{"engine": name}``: a live session (any
        transport) goes on with that engine, its conversation carried over. 404 for a session
        that is not live or not the caller's; 400 naming a bad engine."""
        session = self.sessions.get(request.match_info["session_id"])
        if session is None or self.owners.get(session, "") != principal_of(request).owner:
            raise web.HTTPNotFound(text=f"no live session {request.match_info['session_id']}")
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='the body must be JSON: {"engine": name}') from None
        engine = body.get("engine") if isinstance(body, dict) else None
        try:
            session.switch_engine(check_engine(engine, "engine"))
        except ProtocolError as exc:
            raise web.HTTPBadRequest(text=f"{exc.code}: {exc}") from None
        return web.json_response({"session_id": session.id, "engine": session.engine})

    async def _call_hangup(self, request: web.Request) -> web.Response:
        call = self.calls.get(request.match_info["call_id"])
        if call is None or self.owners.get(call.session, "") != principal_of(request).owner:
            raise web.HTTPNotFound(text=f"no call {request.match_info['call_id']}")
        await call.close("hung up by the client")
        return web.Response(status=200, text="ok")

    def _adopt(self, conn: RealtimeConnection, principal: Principal) -> None:
        """The session belongs to the principal's key, and starts with its client secret's
        configuration, if any. Raises :class:`ProtocolError` if that configuration is refused."""
        self.owners[conn.session] = principal.owner
        if principal.secret is not None:
            conn.apply_session(principal.secret.session)

    def _check_quota(self, principal: Principal) -> None:
        """Refuse (429) a session past the key's ``server.max_sessions_per_key``."""
        live = {*self.sessions.values(), *(call.session for call in self.calls.values())}
        self.gate.check_quota(principal, (self.owners.get(s) for s in live))

    async def _client_secret(self, request: web.Request) -> web.Response:
        """``POST /v1/realtime/client_secrets``: a browser's short-lived secret (``auth.py``)."""
        return await self.gate.mint(request, self._describe_session)

    def _describe_session(self, session: dict[str, Any]) -> dict[str, Any]:
        """A fresh session with this configuration applied, as ``session.created`` shows it;
        raises :class:`ProtocolError`."""
        config = self.realtime_config(self.session_settings())
        config.apply_update(session)
        return config.describe()

    def _check_connecting(self) -> None:
        """Answered calls that have not connected have their own, smaller budget: offers that
        never connect must not take the sessions of clients that do."""
        limit = self.config.webrtc.max_pending_calls
        if sum(not call.connected for call in self.calls.values()) >= limit:
            self.metrics.refuse("calls_connecting")
            raise web.HTTPServiceUnavailable(
                text=f"too many calls connecting ({limit}, webrtc.max_pending_calls); try again"
            )

    def _call_connected(self, call: WebRtcCall) -> str | None:
        """A call's peer connection is up: it becomes a session, or ends if none is free."""
        refused = refusal(self.admission())
        if refused is not None:
            self.metrics.refuse(refused[0])
            return refused[1]
        self.sessions[call.session.id] = call.session
        self.metrics.opened(call.session.id, "webrtc")
        return None

    def _calls_by_state(self) -> tuple[int, int]:
        """WebRTC calls (connecting, connected)."""
        connected = sum(call.connected for call in self.calls.values())
        return len(self.calls) - connected, connected

    def _call_ended(self, call: WebRtcCall) -> None:
        self.calls.pop(call.id, None)
        self.call_control.webrtc_ended(call)
        if self.sessions.pop(call.session.id, None) is not None:
            self._keep_transcript(call.session)

    async def wait_ended(self, session_id: str) -> dict[str, object]:
        """The transcript record of a session, once it has ended. Cancel-safe."""
        if session_id in self.ended:
            return self.ended[session_id]
        future = asyncio.get_running_loop().create_future()
        self._end_waiters.setdefault(session_id, []).append(future)
        return await future

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "sessions": len(self.sessions),
                "calls": len(self.calls),
                "calls_connecting": sum(not call.connected for call in self.calls.values()),
                "tasks": len(asyncio.all_tasks()),
            }
        )

    async def _ready(self, request: web.Request) -> web.Response:
        """``GET /readyz``: 200 while new sessions are taken, else 503 naming what fails."""
        state = self.admission()
        failed = unready(state)
        body = {
            "status": "not ready" if failed else "ready",
            "failed": failed,
            "sessions": state.sessions,
            "max_sessions": state.max_sessions,
        }
        return web.json_response(body, status=503 if failed else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        """``GET /metrics``: the Prometheus text format (``metrics.py``)."""
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _index(self, request: web.Request) -> web.StreamResponse:
        index = WEB_CLIENT / "index.html"
        if not index.is_file():
            raise web.HTTPNotFound(text="web client not installed")
        return web.FileResponse(index)

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host``: ``port``; raises :class:`ConfigError` where that would expose a
        server without API keys (``auth.exposure_refusal``)."""
        refused = exposure_refusal(
            host, keys=self.gate.on, allow_unauthenticated=self.config.server.allow_unauthenticated
        )
        if refused is not None:
            raise ConfigError(refused)
        quiet_malformed_requests()
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        if self.store is not None:
            self.store.start()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        if self.config.sip.enabled:
            await self._start_sip()
        return self.port

    async def _start_sip(self) -> None:
        c = self.config.sip
        options = SipOptions(
            host=c.host,
            port=c.port,
            user=c.user,
            ring_ms=c.ring_ms,
            rtp_timeout=c.rtp_timeout_s,
            ring_timeout=c.ring_timeout_s,
            max_dialogs=c.max_dialogs,
            jitter_depth=c.jitter_packets,
            echo_cancellation=c.echo_cancellation,
            echo_gate_db=c.echo_gate_db,
            registration=registration_settings(c),
            auth_users=auth_users(c.auth_users),
            auth_realm=c.auth_realm,
            tcp=TcpSettings(c.tcp_idle_timeout_s, max_connections=c.tcp_max_connections)
            if c.tcp
            else None,
        )
        agent = SipAgent(options, SipCalls(self, self.call_control.registry))
        try:
            await agent.start()
        except OSError as exc:  # (another server has the port): the rest serves on, without SIP
            log.error("SIP is off: cannot listen on %s:%d (%s)", c.host, c.port, exc)
            return
        self.sip = agent

    async def _sip_call(self, request: web.Request) -> web.Response:
        """``POST /v1/sip/calls``: call a SIP URI (``sip_calls.py``)."""
        if self.sip is None or not isinstance(self.sip.hooks, SipCalls):
            raise web.HTTPServiceUnavailable(text="SIP is off (sip.enabled)")
        return await place_call_route(request, self.sip.hooks)

    async def stop(self) -> None:
        if self.sip is not None:
            await self.sip.stop()
        for call in list(self.calls.values()):
            await call.close("server shutting down")
        for session in list(self.sessions.values()):
            session.close("server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
        if self.store is not None:  # what the sessions' last events queued, then stop
            await asyncio.to_thread(self.store.close, self.config.store.timeout)


def freeze_start_up_objects() -> int:
    """Collect what start-up left behind, then move every object still alive to the garbage
    collector's permanent generation, which no collection scans; returns how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def run_server(config: Config, ready: asyncio.Event | None = None) -> None:
    """Load the models, listen (``/readyz`` says 503 while they warm up), serve until SIGTERM or
    SIGINT, then drain (``drain.py``) and stop. Runs in the main thread (signal handlers)."""
    loaded = await asyncio.to_thread(load_engines, config)
    server = VoiceServer(config, loaded.engines)
    server.warm = not config.server.warm_up
    port = await server.start(config.server.host, config.server.port)
    signals = ShutdownSignals()
    signals.install()
    try:
        warmed: dict[str, float] = {}
        if config.server.warm_up:
            warmed = await asyncio.to_thread(warm_up, loaded.engines, config.pipeline.instructions)
        server.metrics.models(loaded.load_seconds, warmed)
        if config.server.gc_freeze:
            log.info("garbage collector: %d start-up objects frozen", freeze_start_up_objects())
        server.warm = True
        host = config.server.host
        log.info(
            "ready to talk: open http://%s:%d/ or point a Realtime client at ws://%s:%d/v1/realtime",
            host,
            port,
            host,
            port,
        )
        print(f"READY http://{host}:{port}/  ws://{host}:{port}/v1/realtime", flush=True)
        if ready is not None:
            ready.set()
        await signals.drain.wait()
        s = config.server
        await drain(
            server,
            timeout_s=s.drain_timeout_s,
            close_timeout_s=s.close_timeout_s,
            hurry=signals.hurry,
        )
    finally:
        signals.remove()
        await server.stop()
        await asyncio.to_thread(close_engines, loaded.engines)
    log.info("stopped")
