// Browser client for the voice agent: OpenAI Realtime API (GA events) over a WebSocket.
// Mic → mono → 24 kHz PCM16 → input_audio_buffer.append; response.output_audio.delta → WebAudio.
"use strict";

(() => {
  const RATE = 24000; // wire format: audio/pcm, 24 kHz, mono, 16-bit little-endian
  const CHUNK_MS = 20; // how much mic audio goes into one append event
  const LEAD_S = 0.04; // playback jitter margin when (re)starting the audio queue
  const MAX_EVENTS = 10000;
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

  // For tests: events = received event types (no audio deltas); turns = one entry per response.
  const client = { state: "disconnected", events: [], turns: [], bargeIns: 0 };
  Object.assign(client, { connect, disconnect, send, applySettings });
  window.voiceClient = client;

  let ws = null;
  let audio = null; // {ctx, stream, nodes[], resampler}
  const player = { next: 0, sources: new Set(), responseId: null };
  const responses = new Map(); // response_id → {turn, bubble, shown, stopAt}
  const userBubbles = new Map(); // item_id → bubble
  const muted = new Set(); // response ids whose audio was cut by a barge-in
  let speechStoppedAt = null; // performance.now() of the last unclaimed speech_stopped
  let level = 0;
  let attempts = 0;
  const info = { mic: "", session: "" };

  // ------------------------------------------------------------------ connection

  async function connect() {
    if (client.state !== "disconnected") return;
    const attempt = ++attempts; // a disconnect() meanwhile bumps it and so aborts this one
    setState("connecting");
    try {
      const mic = await startMicrophone(micConstraints());
      if (attempt !== attempts) return closeAudio(mic);
      audio = mic;
      const sock = await openSocket(socketUrl());
      if (attempt !== attempts) return closeSocket(sock);
      ws = sock;
      setState("connected");
    } catch (err) {
      if (attempt !== attempts) return;
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
    closeAudio(audio);
    ws = audio = null;
    stopPlayback();
    showLevel(0);
    setState("disconnected");
  }

  function closeSocket(sock) {
    if (!sock) return;
    sock.onopen = sock.onclose = sock.onmessage = sock.onerror = null;
    if (sock.readyState <= WebSocket.OPEN) sock.close(1000, "client disconnect");
  }

  function closeAudio(mic) {
    if (!mic) return;
    mic.stream.getTracks().forEach((t) => t.stop());
    mic.nodes.forEach((n) => n.disconnect());
    mic.ctx.close().catch(() => {});
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

  function send(event) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(event));
    return true;
  }

  // ------------------------------------------------------------------ microphone

  const micConstraints = () => ({
    echoCancellation: $("echo-cancellation").checked,
    noiseSuppression: $("noise-suppression").checked,
    autoGainControl: $("auto-gain").checked,
  });

  async function startMicrophone(constraints) {
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
    const mute = ctx.createGain(); // capture nodes must reach the destination to be pulled
    mute.gain.value = 0;
    mute.connect(ctx.destination);
    const chunk = Math.round((ctx.sampleRate * CHUNK_MS) / 1000);
    const capture = ctx.audioWorklet
      ? await workletCapture(ctx, chunk, onMicChunk)
      : scriptCapture(ctx, onMicChunk);
    source.connect(capture);
    capture.connect(mute);
    const mode = ctx.audioWorklet ? "AudioWorklet" : "ScriptProcessor";
    setInfo("mic", `mic ${ctx.sampleRate} Hz (${mode}) → ${RATE / 1000} kHz PCM16`);
    return { ctx, stream, nodes: [source, capture, mute], resampler: new Resampler(ctx.sampleRate, RATE) };
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
    if (!audio) return;
    showLevel(rmsLevel(samples));
    const pcm = audio.resampler.push(samples);
    if (pcm.length && client.state === "connected") {
      send({ type: "input_audio_buffer.append", audio: toBase64(encodePcm16(pcm)) });
    }
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

  // ------------------------------------------------------------------ playback

  function playDelta(ev) {
    if (!audio || muted.has(ev.response_id)) return;
    const samples = decodePcm16(fromBase64(ev.delta));
    if (samples.length === 0) return;
    const ctx = audio.ctx;
    const buffer = ctx.createBuffer(1, samples.length, RATE);
    buffer.copyToChannel(samples, 0);
    const src = ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(ctx.destination);
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
    "input_audio_buffer.speech_stopped": () => (speechStoppedAt = performance.now()),
    "conversation.item.added": onItemAdded,
    "conversation.item.input_audio_transcription.completed": onUserTranscript,
    "response.created": onResponseCreated,
    "response.output_audio.delta": onAudioDelta,
    "response.output_audio_transcript.delta": onTranscriptDelta,
    "response.done": onResponseDone,
    "x.voice.turn.metrics": onMetrics,
    error: (ev) => showError((ev.error && ev.error.message) || "unknown error"),
  };

  function onEvent(ev) {
    if (ev.type !== "response.output_audio.delta") {
      client.events.push(ev.type);
      if (client.events.length > MAX_EVENTS) client.events.shift();
    }
    const handler = handlers[ev.type];
    if (handler) handler(ev);
  }

  function onSpeechStarted(ev) {
    if (isPlaying()) { // barge-in: silence the agent at once and drop the rest of that reply
      const r = responses.get(player.responseId);
      muted.add(player.responseId);
      stopPlayback();
      client.bargeIns++;
      if (r) markBubble(r.bubble, "interrupted");
    }
    userBubble(ev.item_id);
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

  function onResponseCreated(ev) {
    const r = ensureResponse(ev.response.id);
    r.stopAt = speechStoppedAt;
    speechStoppedAt = null;
  }

  function onAudioDelta(ev) {
    const r = ensureResponse(ev.response_id);
    if (r.turn.pageLatencyMs === null && r.stopAt !== null) {
      r.turn.pageLatencyMs = Math.round(performance.now() - r.stopAt);
      renderLatency(r);
    }
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
      r = { turn, bubble: addBubble("agent"), shown: "", stopAt: null };
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

  function showCut(r, heard) {
    const end = heardEnd(r.shown, heard);
    const cut = end < 0 ? "" : r.shown.slice(end).trim();
    setText(r.bubble, heard || (cut ? "" : "(stopped before speaking)"), cut);
  }

  // Index in `shown` just past the `heard` prefix, ignoring whitespace differences; -1 if no prefix.
  function heardEnd(shown, heard) {
    let i = 0, j = 0;
    while (j < heard.length && i < shown.length) {
      if (shown[i] === heard[j]) { i++; j++; }
      else if (/\s/.test(heard[j])) j++;
      else if (/\s/.test(shown[i])) i++;
      else return -1;
    }
    while (j < heard.length && /\s/.test(heard[j])) j++;
    return j >= heard.length ? i : -1;
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
      ["Page: stop → 1st audio", turn.pageLatencyMs],
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
    const parts = [session.model && `model ${session.model}`, out.voice && `voice ${$("voice").value}`];
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
    $("connect").addEventListener("click", () => connect());
    $("disconnect").addEventListener("click", () => disconnect());
    $("settings").addEventListener("submit", (e) => {
      e.preventDefault();
      applySettings();
    });
    setState("disconnected");
  }

  init();
})();
