// Browser client for the voice agent: the OpenAI Realtime API (GA events) over WebRTC (default)
// or a WebSocket (?transport=ws, or the Transport box).
//   WebRTC: the mic track and the agent's Opus track ride a peer connection made with
//     POST /v1/realtime/calls (SDP offer → answer); events travel on the data channel "oai-events".
//   WebSocket: mic → mono → 24 kHz PCM16 → input_audio_buffer.append;
//     response.output_audio.delta → WebAudio.
// Both: AnalyserNodes follow the mic and the agent's voice (level meter, page-side latency), and
// MediaRecorder records the agent's voice (window.voiceClient.recording(), for tests).
"use strict";

(() => {
  const RATE = 24000; // WebSocket wire format: audio/pcm, 24 kHz, mono, 16-bit little-endian
  const CHUNK_MS = 20; // how much mic audio goes into one append event
  const LEAD_S = 0.04; // playback jitter margin when (re)starting the audio queue
  const MAX_EVENTS = 10000;
  const LOUD = 0.015; // a peak above this (≈ 500 in PCM16) is sound, not silence
  const POLL_MS = 10; // how often the analysers are read
  const MIC_QUIET_MS = 300; // a reply can only start after this much caller silence
  const LEVEL_STEP_MS = 50; // resolution of voiceClient.levels
  const MAX_LEVELS = 24000; // 20 minutes of levels
  const ICE_WAIT_MS = 3000; // longest wait for ICE gathering before the offer goes anyway
  const OPEN_WAIT_MS = 20000; // longest wait for the data channel to open
  const CALLS = "/v1/realtime/calls";
  // Server marks (ms after the end of the caller's speech); first_audio_sent is voice-to-voice.
  const STAGES = [["turn_end", "turn end"], ["asr_done", "ASR"],
    ["llm_first_token", "LLM 1st token"], ["tts_first_audio", "TTS 1st audio"]];

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls = "", text = "") => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text) node.textContent = text;
    return node;
  };

  // ------------------------------------------------------------------ state

  // For tests and benchmarks:
  //   events     received event types (no audio deltas); eventLog: {type, t, response_id, status}
  //   turns      one entry per response: status, transcript, server metrics, pageLatencyMs
  //   latencies  page-side voice-to-voice: last caller speech → first agent audio heard
  //   levels     peak level per LEVEL_STEP_MS of the mic and of the agent's voice since t0
  //   localCandidates  the a=candidate lines of the WebRTC offer
  // Times are performance.now() milliseconds.
  const client = {
    state: "disconnected", transport: null, events: [], eventLog: [], turns: [], bargeIns: 0,
    latencies: [], levels: null, localCandidates: [], connectedAt: null, callLocation: null,
  };
  Object.assign(client, { connect, disconnect, send, applySettings, recording });
  window.voiceClient = client;

  let ws = null;
  let rtc = null; // {pc, channel, location}
  let audio = null; // {ctx, stream, nodes[], micAnalyser, agentAnalyser, agentBus, resampler, timer}
  let rec = null; // {recorder, chunks, stopped: Promise}
  const player = { next: 0, sources: new Set(), responseId: null };
  const responses = new Map(); // response_id → {turn, bubble, shown}
  const userBubbles = new Map(); // item_id → bubble
  const muted = new Set(); // response ids whose audio was cut by a barge-in (WebSocket)
  const heard = { micLastLoud: -Infinity, agentLastLoud: -Infinity, awaiting: false, pending: null };
  let agentResponseId = null; // the response whose audio is playing
  let level = 0;
  let attempts = 0;
  const info = { mic: "", session: "" };

  // ------------------------------------------------------------------ connection

  function chosenTransport() {
    return $("transport").value === "ws" ? "ws" : "webrtc";
  }

  async function connect() {
    if (client.state !== "disconnected") return;
    const attempt = ++attempts; // a disconnect() meanwhile bumps it and so aborts this one
    const stale = () => attempt !== attempts;
    const transport = chosenTransport();
    client.transport = transport;
    setState("connecting");
    try {
      const mic = await startAudio(micConstraints(), transport === "ws");
      if (stale()) return closeAudio(mic);
      audio = mic;
      if (transport === "ws") {
        const sock = await openSocket(socketUrl());
        if (stale()) return closeSocket(sock);
        ws = sock;
        record(audio.agentStream);
      } else {
        await openCall(stale);
        if (stale()) return;
      }
      client.connectedAt = performance.now();
      setState("connected");
    } catch (err) {
      if (stale()) return;
      showError(`Could not connect: ${err.message || err}`);
      teardown();
    }
  }

  function disconnect() {
    if (client.state !== "disconnected") teardown();
  }

  function teardown() {
    attempts++;
    closeSocket(ws);
    closeCall(rtc);
    stopRecorder();
    closeAudio(audio);
    ws = rtc = audio = null;
    stopPlayback();
    agentResponseId = null;
    Object.assign(heard, { micLastLoud: -Infinity, agentLastLoud: -Infinity, awaiting: false, pending: null });
    showLevel(0);
    setState("disconnected");
  }

  function send(event) {
    const text = JSON.stringify(event);
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(text);
      return true;
    }
    if (rtc && rtc.channel && rtc.channel.readyState === "open") {
      rtc.channel.send(text);
      return true;
    }
    return false;
  }

  // ------------------------------------------------------------------ WebSocket

  function closeSocket(sock) {
    if (!sock) return;
    sock.onopen = sock.onclose = sock.onmessage = sock.onerror = null;
    if (sock.readyState <= WebSocket.OPEN) sock.close(1000, "client disconnect");
  }

  const socketUrl = () => `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/v1/realtime`;

  function openSocket(url) {
    return new Promise((resolve, reject) => {
      const sock = new WebSocket(url);
      sock.onopen = () => {
        sock.onclose = onSocketClosed;
        resolve(sock);
      };
      sock.onerror = () => reject(new Error(`WebSocket to ${url} failed`));
      sock.onclose = (e) => reject(new Error(`WebSocket closed (${e.code})`));
      sock.onmessage = (msg) => onEvent(JSON.parse(msg.data));
    });
  }

  function onSocketClosed(e) {
    ws = null;
    if (client.state !== "disconnected") {
      showError(`Connection closed (${e.code}${e.reason ? `: ${e.reason}` : ""})`);
      teardown();
    }
  }

  // ------------------------------------------------------------------ WebRTC

  // The OpenAI-compatible flow: mic track + data channel "oai-events", then the SDP offer is
  // POSTed (after ICE gathering, so it carries our candidates) and the answer applied.
  async function openCall(stale) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    const call = { pc, channel: null, location: null };
    rtc = call;
    const track = audio.stream.getAudioTracks()[0];
    pc.addTrack(track, audio.stream);
    const channel = pc.createDataChannel("oai-events");
    call.channel = channel;
    channel.onmessage = (msg) => {
      if (typeof msg.data === "string") onEvent(JSON.parse(msg.data));
    };
    const opened = new Promise((resolve, reject) => {
      channel.onopen = resolve;
      channel.onclose = () => reject(new Error("the data channel closed"));
      setTimeout(() => reject(new Error(`no data channel after ${OPEN_WAIT_MS / 1000} s`)), OPEN_WAIT_MS);
    });
    opened.catch(() => {}); // handled below; avoids an unhandled rejection if we bail out first
    pc.ontrack = (e) => onRemoteTrack(e.streams[0] || new MediaStream([e.track]));
    pc.onconnectionstatechange = () => {
      if (rtc !== call) return;
      if (pc.connectionState === "failed" && client.state !== "disconnected") {
        showError("WebRTC connection failed");
        teardown();
      }
    };
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc, ICE_WAIT_MS);
    if (stale()) return;
    const offer = pc.localDescription.sdp;
    client.localCandidates = offer.split(/\r?\n/).filter((l) => l.startsWith("a=candidate"));
    const resp = await fetch(CALLS, {
      method: "POST",
      headers: { "Content-Type": "application/sdp" },
      body: offer,
    });
    const answer = await resp.text();
    if (resp.status !== 201) throw new Error(`POST ${CALLS}: ${resp.status} ${answer.trim()}`);
    call.location = resp.headers.get("Location");
    client.callLocation = call.location;
    if (stale()) return hangUp(call.location);
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    await opened;
    if (stale()) return;
    channel.onclose = () => {
      if (rtc === call && client.state !== "disconnected") {
        showError("The call ended (data channel closed)");
        teardown();
      }
    };
    setInfo("mic", `mic → WebRTC (Opus ${track.getSettings().sampleRate || 48000} Hz)`);
  }

  function iceGathered(pc, waitMs) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      };
      const check = () => pc.iceGatheringState === "complete" && done();
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(done, waitMs);
    });
  }

  function onRemoteTrack(stream) {
    const speaker = $("agent-audio");
    speaker.srcObject = stream;
    speaker.play().catch((err) => showError(`Cannot play the agent's audio: ${err.message || err}`));
    if (!audio) return;
    // WebAudio reads a remote stream only while a media element plays it too (Chromium)
    const source = audio.ctx.createMediaStreamSource(stream);
    source.connect(audio.agentAnalyser);
    audio.nodes.push(source);
    record(stream);
  }

  function closeCall(call) {
    if (!call) return;
    const { pc, channel } = call;
    if (channel) channel.onopen = channel.onclose = channel.onmessage = null;
    pc.ontrack = pc.onconnectionstatechange = null;
    $("agent-audio").srcObject = null;
    if (!call.location) return pc.close();
    // hang up before closing, so the server ends the call on our word, not on a dead channel
    const timer = setTimeout(() => pc.close(), 2000);
    hangUp(call.location).finally(() => {
      clearTimeout(timer);
      pc.close();
    });
  }

  function hangUp(where) {
    if (!where) return Promise.resolve();
    return fetch(`${where}/hangup`, { method: "POST", keepalive: true }).catch(() => {});
  }

  // ------------------------------------------------------------------ microphone + analysers

  const micConstraints = () => ({
    echoCancellation: $("echo-cancellation").checked,
    noiseSuppression: $("noise-suppression").checked,
    autoGainControl: $("auto-gain").checked,
  });

  // The AudioContext, the mic stream and the analysers; with `capture`, also the PCM capture
  // the WebSocket transport sends, and the bus its playback goes through.
  async function startAudio(constraints, capture) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("microphone access needs HTTPS or localhost");
    }
    const ctx = new AudioContext({ latencyHint: "interactive" });
    let stream;
    try {
      await ctx.resume();
      stream = await navigator.mediaDevices.getUserMedia({ audio: constraints });
    } catch (err) {
      ctx.close().catch(() => {});
      throw err;
    }
    const source = ctx.createMediaStreamSource(stream);
    const mute = ctx.createGain(); // nodes must reach the destination to be pulled
    mute.gain.value = 0;
    mute.connect(ctx.destination);
    const micAnalyser = analyser(ctx, mute);
    const agentAnalyser = analyser(ctx, mute);
    source.connect(micAnalyser);
    const mic = { ctx, stream, nodes: [source, mute, micAnalyser, agentAnalyser], micAnalyser, agentAnalyser };
    if (capture) {
      const chunk = Math.round((ctx.sampleRate * CHUNK_MS) / 1000);
      const node = ctx.audioWorklet
        ? await workletCapture(ctx, chunk, onMicChunk)
        : scriptCapture(ctx, onMicChunk);
      source.connect(node);
      node.connect(mute);
      const bus = ctx.createGain(); // WebSocket playback: → speakers, analyser and recorder
      bus.connect(ctx.destination);
      bus.connect(agentAnalyser);
      const tap = ctx.createMediaStreamDestination();
      bus.connect(tap);
      Object.assign(mic, { agentBus: bus, agentStream: tap.stream, resampler: new Resampler(ctx.sampleRate, RATE) });
      mic.nodes.push(node, bus, tap);
      const mode = ctx.audioWorklet ? "AudioWorklet" : "ScriptProcessor";
      setInfo("mic", `mic ${ctx.sampleRate} Hz (${mode}) → ${RATE / 1000} kHz PCM16`);
    }
    const t0 = performance.now();
    client.levels = { t0, stepMs: LEVEL_STEP_MS, loud: LOUD, mic: [], agent: [] };
    mic.timer = setInterval(() => pollLevels(mic), POLL_MS);
    return mic;
  }

  function analyser(ctx, sink) {
    const node = ctx.createAnalyser();
    node.fftSize = 1024; // ~21 ms at 48 kHz: two polls overlap, so no sound slips between them
    node.connect(sink);
    return node;
  }

  function closeAudio(mic) {
    if (!mic) return;
    clearInterval(mic.timer);
    mic.stream.getTracks().forEach((t) => t.stop());
    mic.nodes.forEach((n) => n.disconnect());
    mic.ctx.close().catch(() => {});
  }

  // Runs on the audio thread: downmixes to mono and posts CHUNK_MS blocks at the context's rate.
  const WORKLET = `registerProcessor("voice-capture", class extends AudioWorkletProcessor {
    constructor(options) { super(); this.size = options.processorOptions.size; this.fresh(); }
    fresh() { this.buf = new Float32Array(this.size); this.n = 0; }
    process([chans]) {
      for (let i = 0; chans && chans.length && i < chans[0].length; i++) {
        let sum = 0;
        for (const ch of chans) sum += ch[i];
        this.buf[this.n++] = sum / chans.length;
        if (this.n === this.size) { this.port.postMessage(this.buf, [this.buf.buffer]); this.fresh(); }
      }
      return true;
    }
  });`;

  async function workletCapture(ctx, size, onChunk) {
    const url = URL.createObjectURL(new Blob([WORKLET], { type: "application/javascript" }));
    try { await ctx.audioWorklet.addModule(url); } finally { URL.revokeObjectURL(url); }
    const options = { numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { size } };
    const node = new AudioWorkletNode(ctx, "voice-capture", options);
    node.port.onmessage = (e) => onChunk(e.data);
    return node;
  }

  function scriptCapture(ctx, onChunk) {
    const node = ctx.createScriptProcessor(1024, 2, 1);
    node.onaudioprocess = (e) => {
      const input = e.inputBuffer;
      const mono = new Float32Array(input.length);
      for (let c = 0; c < input.numberOfChannels; c++) {
        const data = input.getChannelData(c);
        for (let i = 0; i < mono.length; i++) mono[i] += data[i] / input.numberOfChannels;
      }
      onChunk(mono);
    };
    return node;
  }

  function onMicChunk(samples) {
    if (!audio || !audio.resampler) return;
    const pcm = audio.resampler.push(samples);
    if (pcm.length && client.state === "connected") {
      send({ type: "input_audio_buffer.append", audio: toBase64(encodePcm16(pcm)) });
    }
  }

  // Page-side latency: the last time the mic carried speech → the first agent sound after it.
  // An agent sound counts as a reply only after MIC_QUIET_MS of caller silence (the server needs
  // more to end a turn) and if the agent was silent since the caller's speech ended — so the
  // agent's own voice still playing while the caller cuts in is not taken for a reply.
  function pollLevels(mic) {
    const now = performance.now();
    const buf = new Float32Array(mic.micAnalyser.fftSize);
    mic.micAnalyser.getFloatTimeDomainData(buf);
    const micPeak = peakOf(buf);
    showLevel(rmsLevel(buf));
    mic.agentAnalyser.getFloatTimeDomainData(buf);
    const agentPeak = peakOf(buf);
    if (micPeak > LOUD) {
      heard.micLastLoud = now;
      heard.awaiting = true;
    }
    if (agentPeak > LOUD) {
      if (heard.awaiting && now - heard.micLastLoud >= MIC_QUIET_MS && heard.agentLastLoud < heard.micLastLoud) {
        heard.awaiting = false;
        onAgentHeard(heard.micLastLoud, now);
      }
      heard.agentLastLoud = now;
    }
    keepLevels(now, micPeak, agentPeak);
  }

  function keepLevels(now, micPeak, agentPeak) {
    const lv = client.levels;
    const i = Math.floor((now - lv.t0) / LEVEL_STEP_MS);
    if (i >= MAX_LEVELS) return;
    while (lv.mic.length <= i) { lv.mic.push(0); lv.agent.push(0); }
    lv.mic[i] = Math.max(lv.mic[i], round3(micPeak));
    lv.agent[i] = Math.max(lv.agent[i], round3(agentPeak));
  }

  const round3 = (x) => Math.round(x * 1000) / 1000;

  function onAgentHeard(speechEnd, at) {
    const entry = { ms: Math.round(at - speechEnd), speechEnd, heardAt: at, response_id: null };
    client.latencies.push(entry);
    const r = agentResponseId && responses.get(agentResponseId);
    if (r && r.turn.pageLatencyMs === null) assignLatency(r, entry);
    else heard.pending = entry; // the response's first event has not arrived yet
  }

  function assignLatency(r, entry) {
    entry.response_id = r.turn.response_id;
    r.turn.pageLatencyMs = entry.ms;
    renderLatency(r);
  }

  function agentStarted(responseId) {
    agentResponseId = responseId;
    const r = ensureResponse(responseId);
    const entry = heard.pending;
    heard.pending = null;
    if (entry && r.turn.pageLatencyMs === null && performance.now() - entry.heardAt < 5000) {
      assignLatency(r, entry);
    }
  }

  function peakOf(samples) {
    let peak = 0;
    for (let i = 0; i < samples.length; i++) {
      const a = Math.abs(samples[i]);
      if (a > peak) peak = a;
    }
    return peak;
  }

  function rmsLevel(samples) {
    let sum = 0;
    for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
    const db = 10 * Math.log10(sum / Math.max(1, samples.length) + 1e-10);
    return Math.min(1, Math.max(0, (db + 60) / 60)); // -60 dBFS … 0 dBFS
  }

  function showLevel(value) {
    level = Math.max(value, level * 0.85);
    if (value === 0) level = 0;
    const meter = $("meter");
    meter.firstElementChild.style.width = `${(level * 100).toFixed(1)}%`;
    meter.setAttribute("aria-valuenow", String(Math.round(level * 100)));
  }

  // Streaming resampler: box-filter decimation when shrinking a lot, linear interpolation otherwise.
  class Resampler {
    constructor(from, to) {
      this.ratio = from / to;
      this.pending = new Float32Array(0);
      this.pos = 0;
    }

    push(input) {
      const buf = new Float32Array(this.pending.length + input.length);
      buf.set(this.pending);
      buf.set(input, this.pending.length);
      const r = this.ratio;
      const span = Math.max(1, r);
      const out = new Float32Array(Math.ceil(buf.length / r) + 1);
      let p = this.pos, n = 0;
      while (p + span < buf.length) {
        out[n++] = r >= 1.5 ? boxAverage(buf, p, r) : lerp(buf, p);
        p += r;
      }
      const used = Math.floor(p);
      this.pending = buf.slice(used);
      this.pos = p - used;
      return out.subarray(0, n);
    }
  }

  function boxAverage(buf, p, r) {
    const a = Math.floor(p), b = Math.max(a + 1, Math.floor(p + r));
    let sum = 0;
    for (let i = a; i < b; i++) sum += buf[i];
    return sum / (b - a);
  }

  function lerp(buf, p) {
    const i = Math.floor(p), f = p - i;
    return buf[i] * (1 - f) + buf[i + 1] * f;
  }

  // ------------------------------------------------------------------ recording the agent

  function record(stream) {
    stopRecorder();
    if (typeof MediaRecorder === "undefined") return;
    const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm"]
      .find((t) => MediaRecorder.isTypeSupported(t));
    const recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
    const chunks = [];
    recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
    const stopped = new Promise((resolve) => (recorder.onstop = resolve));
    recorder.start(1000);
    rec = { recorder, chunks, stopped };
  }

  function stopRecorder() {
    if (rec && rec.recorder.state !== "inactive") rec.recorder.stop();
  }

  // The agent's voice recorded so far (this call, or the last one): 16 kHz mono PCM16, base64.
  async function recording() {
    if (!rec) throw new Error("nothing recorded: connect first");
    const { recorder, chunks, stopped } = rec;
    if (recorder.state === "recording") {
      const flushed = new Promise((resolve) => recorder.addEventListener("dataavailable", resolve, { once: true }));
      recorder.requestData();
      await flushed;
    } else {
      await stopped;
    }
    const blob = new Blob(chunks, { type: recorder.mimeType });
    const ctx = new OfflineAudioContext(1, 1, 16000); // decodeAudioData resamples to 16 kHz
    const decoded = await ctx.decodeAudioData(await blob.arrayBuffer());
    const mono = new Float32Array(decoded.length);
    for (let c = 0; c < decoded.numberOfChannels; c++) {
      const data = decoded.getChannelData(c);
      for (let i = 0; i < mono.length; i++) mono[i] += data[i] / decoded.numberOfChannels;
    }
    return { sampleRate: 16000, mimeType: recorder.mimeType, seconds: decoded.duration, pcm: toBase64(encodePcm16(mono)) };
  }

  // ------------------------------------------------------------------ PCM16 + base64

  function encodePcm16(samples) {
    const view = new DataView(new ArrayBuffer(samples.length * 2));
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      view.setInt16(i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
    return new Uint8Array(view.buffer);
  }

  function decodePcm16(bytes) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const out = new Float32Array(bytes.byteLength >> 1);
    for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, true) / 32768;
    return out;
  }

  function toBase64(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(s);
  }

  function fromBase64(text) {
    const s = atob(text);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  // ------------------------------------------------------------------ playback (WebSocket)

  function playDelta(ev) {
    if (!audio || !audio.agentBus || muted.has(ev.response_id)) return;
    const samples = decodePcm16(fromBase64(ev.delta));
    if (samples.length === 0) return;
    const ctx = audio.ctx;
    const buffer = ctx.createBuffer(1, samples.length, RATE);
    buffer.copyToChannel(samples, 0);
    const src = ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(audio.agentBus);
    if (player.next < ctx.currentTime + 0.005) player.next = ctx.currentTime + LEAD_S;
    src.start(player.next);
    player.next += buffer.duration;
    player.sources.add(src);
    src.onended = () => player.sources.delete(src);
    player.responseId = ev.response_id;
  }

  const isPlaying = () => player.sources.size > 0;

  function stopPlayback() {
    for (const src of player.sources) {
      src.onended = null;
      try { src.stop(); } catch (_) { /* never started */ }
    }
    player.sources.clear();
    player.next = 0;
  }

  // ------------------------------------------------------------------ server events

  const handlers = {
    "session.created": (ev) => showSession(ev.session),
    "session.updated": (ev) => showSession(ev.session),
    "input_audio_buffer.speech_started": onSpeechStarted,
    "conversation.item.added": onItemAdded,
    "conversation.item.input_audio_transcription.completed": onUserTranscript,
    "response.created": (ev) => ensureResponse(ev.response.id),
    "response.output_audio.delta": onAudioDelta,
    "response.output_audio_transcript.delta": onTranscriptDelta,
    "response.done": onResponseDone,
    "output_audio_buffer.started": (ev) => agentStarted(ev.response_id),
    "output_audio_buffer.stopped": (ev) => agentStopped(ev.response_id),
    "output_audio_buffer.cleared": onAudioCleared,
    "x.voice.turn.metrics": onMetrics,
    error: (ev) => showError((ev.error && ev.error.message) || "unknown error"),
  };

  function onEvent(ev) {
    if (ev.type !== "response.output_audio.delta") {
      client.events.push(ev.type);
      const rid = ev.response_id || (ev.response && ev.response.id) || undefined;
      const status = ev.response && ev.response.status;
      client.eventLog.push({ type: ev.type, t: performance.now(), response_id: rid, status });
      if (client.events.length > MAX_EVENTS) client.events.shift();
      if (client.eventLog.length > MAX_EVENTS) client.eventLog.shift();
    }
    const handler = handlers[ev.type];
    if (handler) handler(ev);
  }

  function onSpeechStarted(ev) {
    if (isPlaying()) { // WebSocket barge-in: silence the agent at once, drop the rest of that reply
      const r = responses.get(player.responseId);
      muted.add(player.responseId);
      stopPlayback();
      client.bargeIns++;
      if (r) markBubble(r.bubble, "interrupted");
    }
    userBubble(ev.item_id);
  }

  // WebRTC barge-in: the server flushed the agent's audio (the caller cut in)
  function onAudioCleared(ev) {
    const r = ensureResponse(ev.response_id);
    client.bargeIns++;
    markBubble(r.bubble, "interrupted");
    agentStopped(ev.response_id);
  }

  function agentStopped(responseId) {
    if (agentResponseId === responseId) agentResponseId = null;
  }

  function onItemAdded(ev) {
    const item = ev.item || {};
    if (item.role !== "user") return;
    const bubble = userBubble(item.id);
    const part = (item.content || [])[0] || {};
    if (part.type === "input_text") setText(bubble, part.text || "");
  }

  function onUserTranscript(ev) {
    const bubble = userBubble(ev.item_id);
    const text = (ev.transcript || "").trim();
    setText(bubble, text || "(nothing recognised)");
    bubble.classList.toggle("unheard", !text);
  }

  function onAudioDelta(ev) {
    if (agentResponseId !== ev.response_id && !muted.has(ev.response_id)) agentStarted(ev.response_id);
    playDelta(ev);
  }

  function onTranscriptDelta(ev) {
    const r = ensureResponse(ev.response_id);
    r.shown += ev.delta;
    setText(r.bubble, r.shown);
  }

  function onResponseDone(ev) {
    const resp = ev.response;
    const r = ensureResponse(resp.id);
    const part = (((resp.output || [])[0] || {}).content || [])[0];
    const final = part ? part.transcript || part.text || "" : r.shown; // for cancelled: what was heard
    Object.assign(r.turn, { status: resp.status, transcript: final });
    r.bubble.classList.remove("pending");
    if (resp.status === "cancelled") {
      showCut(r, final);
      markBubble(r.bubble, "interrupted");
    } else {
      setText(r.bubble, final);
      if (resp.status === "failed") markBubble(r.bubble, "failed");
    }
  }

  function onMetrics(ev) {
    const r = ensureResponse(ev.response_id);
    r.turn.metrics = ev.metrics_ms || null;
    renderLatency(r);
  }

  function ensureResponse(id) {
    let r = responses.get(id);
    if (!r) {
      const turn = { response_id: id, status: "in_progress", transcript: "" };
      Object.assign(turn, { metrics: null, pageLatencyMs: null });
      client.turns.push(turn);
      r = { turn, bubble: addBubble("agent"), shown: "" };
      r.bubble.classList.add("pending");
      responses.set(id, r);
    }
    return r;
  }

  // ------------------------------------------------------------------ transcript view

  function userBubble(itemId) {
    let bubble = userBubbles.get(itemId);
    if (!bubble) {
      bubble = addBubble("user");
      setText(bubble, "…");
      userBubbles.set(itemId, bubble);
    }
    return bubble;
  }

  function addBubble(role) {
    const box = $("transcript");
    const empty = box.querySelector(".empty");
    if (empty) empty.remove();
    const bubble = el("div", `msg ${role}`);
    bubble.append(el("span", "who", role === "user" ? "You" : "Agent"), el("p", "text"));
    const stick = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    box.append(bubble);
    if (stick) box.scrollTop = box.scrollHeight;
    return bubble;
  }

  function setText(bubble, said, cut = "") {
    const text = bubble.querySelector(".text");
    text.textContent = said;
    if (!cut) return keepScrolled();
    const del = el("del", "cut", cut);
    del.title = "generated but not heard";
    text.append(said ? " " : "", del);
    keepScrolled();
  }

  function showCut(r, heardText) {
    const end = heardEnd(r.shown, heardText);
    const cut = end < 0 ? "" : r.shown.slice(end).trim();
    setText(r.bubble, heardText || (cut ? "" : "(stopped before speaking)"), cut);
  }

  // Index in `shown` just past the `heard` prefix, ignoring whitespace differences; -1 if no prefix.
  function heardEnd(shown, heardText) {
    let i = 0, j = 0;
    while (j < heardText.length && i < shown.length) {
      if (shown[i] === heardText[j]) { i++; j++; }
      else if (/\s/.test(heardText[j])) j++;
      else if (/\s/.test(shown[i])) i++;
      else return -1;
    }
    while (j < heardText.length && /\s/.test(heardText[j])) j++;
    return j >= heardText.length ? i : -1;
  }

  function markBubble(bubble, label) {
    bubble.classList.add(label);
    if (bubble.querySelector(".marker")) return;
    bubble.querySelector(".who").after(el("span", "marker", label));
  }

  function keepScrolled() {
    const box = $("transcript");
    if (box.scrollHeight - box.scrollTop - box.clientHeight < 120) box.scrollTop = box.scrollHeight;
  }

  // ------------------------------------------------------------------ latency view

  const fmt = (ms) => (ms === null || ms === undefined ? "–" : `${Math.round(ms)} ms`);

  function renderLatency(r) {
    const m = r.turn.metrics || {};
    const meta = r.bubble.querySelector(".meta") || r.bubble.appendChild(el("p", "meta"));
    const head = `voice-to-voice ${fmt(m.first_audio_sent)} · page ${fmt(r.turn.pageLatencyMs)}`;
    const stages = STAGES.map(([key, name]) => `${name} ${fmt(m[key])}`).join(" · ");
    meta.replaceChildren(el("strong", "", head), el("span", "stages", stages));
    renderLatencyPanel(r.turn);
  }

  function renderLatencyPanel(turn) {
    const m = turn.metrics || {};
    const rows = [
      ["Voice-to-voice (server)", m.first_audio_sent],
      ["Page: speech end → 1st sound", turn.pageLatencyMs],
      ...STAGES.map(([key, name]) => [`  ${name}`, m[key]]),
    ];
    const v2v = client.turns.map((t) => t.metrics && t.metrics.first_audio_sent).filter((x) => x != null);
    const dl = el("dl");
    for (const [name, value] of rows) {
      dl.append(el("dt", name.startsWith(" ") ? "stage" : "", name.trim()), el("dd", "", fmt(value)));
    }
    const summary = el("p", "muted", v2v.length
      ? `Last turn shown. Median voice-to-voice over ${v2v.length} turn(s): ${fmt(median(v2v))}`
      : "Last turn shown (ms after end of speech).");
    $("latency").replaceChildren(dl, summary);
  }

  function median(values) {
    const s = [...values].sort((a, b) => a - b), mid = s.length >> 1;
    return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  }

  // ------------------------------------------------------------------ settings + status

  function showSession(session) {
    if (!session) return;
    if (typeof session.instructions === "string") $("instructions").value = session.instructions;
    const out = (session.audio && session.audio.output) || {};
    if (out.voice) $("voice").value = typeof out.voice === "string" ? out.voice : out.voice.id || "";
    const parts = [
      client.transport && (client.transport === "ws" ? "WebSocket" : "WebRTC"),
      session.model && `model ${session.model}`,
      out.voice && `voice ${$("voice").value}`,
    ];
    setInfo("session", parts.filter(Boolean).join(" · "));
  }

  function applySettings() {
    const session = { type: "realtime", instructions: $("instructions").value };
    const voice = $("voice").value.trim();
    if (voice) session.audio = { output: { voice } };
    return send({ type: "session.update", session });
  }

  function setState(state) {
    client.state = state;
    const badge = $("state");
    badge.textContent = state;
    badge.dataset.state = state;
    $("connect").disabled = state !== "disconnected";
    $("disconnect").disabled = state === "disconnected";
    $("apply").disabled = state !== "connected";
    $("transport").disabled = state !== "disconnected";
  }

  function setInfo(key, text) {
    info[key] = text;
    $("session-info").textContent = [info.session, info.mic].filter(Boolean).join(" · ");
  }

  function showError(message) {
    const list = $("errors");
    list.prepend(el("li", "", `${new Date().toLocaleTimeString()} ${message}`));
    while (list.children.length > 5) list.lastElementChild.remove();
  }

  function init() {
    const wanted = new URLSearchParams(location.search).get("transport");
    if (wanted === "ws" || wanted === "webrtc") $("transport").value = wanted;
    $("connect").addEventListener("click", () => connect());
    $("disconnect").addEventListener("click", () => disconnect());
    $("settings").addEventListener("submit", (e) => {
      e.preventDefault();
      applySettings();
    });
    window.addEventListener("pagehide", () => rtc && hangUp(rtc.location));
    setState("disconnected");
  }

  init();
})();
