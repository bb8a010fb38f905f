// Browser client for the voice agent: the OpenAI Realtime API (GA events) over WebRTC (default)
// or a WebSocket (?transport=ws, or the Transport box).
//   WebRTC: the mic track and the agent's Opus track ride a peer connection made with
//     POST /v1/realtime/calls (SDP offer → answer); events travel on the data channel "oai-events".
//   WebSocket: mic → mono → 24 kHz PCM16 → input_audio_buffer.append;
//     response.output_audio.delta → WebAudio.
// Both: an AudioWorklet follows the mic and the agent's voice (levels.js: level meter, page-side
// latency, on the audio clock), and with ?record (tests) MediaRecorder records the agent's
// voice (window.voiceClient.recording()).
//
// This module wires the others together: window.voiceClient, connect/disconnect, the server
// events, the settings form.
import { client } from "./client.js";
import { takeSecretFromUrl } from "./credentials.js";
import { $ } from "./dom.js";
import { agentStarted, agentStopped, notePeaks, playingResponse, resetLatency, showMetrics } from "./latency.js";
import { closeAudio, micConstraints, showLevel, startAudio } from "./microphone.js";
import { encodePcm16, toBase64 } from "./pcm.js";
import {
  cutPlayback, holdRemote, isMuted, isPlaying, playDelta, playRemote, record, recording,
  stopPlayback, stopRecorder, stopRemote,
} from "./playback.js";
import { setInfo, setState, showError } from "./status.js";
import {
  ensureResponse, findResponse, markBubble, showItem, showResponseDone, showTranscriptDelta,
  showUserTranscript, showInterimTranscript, userBubble,
} from "./transcript.js";
import { closeCall, hangUp, newCall, receiverStats, sendOnCall, startCall } from "./transport-webrtc.js";
import { closeSocket, openSocket, sendOnSocket, socketUrl } from "./transport-websocket.js";

const MAX_EVENTS = 10000;

Object.assign(client, { connect, disconnect, send, applySettings, recording, receiverStats: () => receiverStats(rtc) });
window.voiceClient = client;

let ws = null;
let rtc = null; // {pc, channel, location}
let audio = null; // see microphone.startAudio
let attempts = 0;

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
    const onChunk = transport === "ws" ? onMicChunk : null;
    const mic = await startAudio(micConstraints(), { onChunk, onPeaks: notePeaks });
    if (stale()) return closeAudio(mic);
    audio = mic;
    if (transport === "ws") await connectSocket(stale);
    else await connectCall(stale);
    if (stale()) return;
    client.connectedAt = performance.now();
    setState("connected");
  } catch (err) {
    if (stale()) return;
    showError(`Could not connect: ${err.message || err}`);
    teardown();
  }
}

async function connectSocket(stale) {
  const sock = await openSocket(socketUrl(), { onEvent, onClosed: onSocketClosed });
  if (stale()) return closeSocket(sock);
  ws = sock;
  record(audio.agentStream);
}

async function connectCall(stale) {
  rtc = newCall();
  const hooks = { onEvent, onTrack: (stream) => playRemote(audio, stream), onLost: onCallLost };
  await startCall(rtc, audio.stream, stale, hooks);
}

function disconnect() {
  if (client.state !== "disconnected") teardown();
}

function teardown() {
  attempts++;
  closeSocket(ws);
  closeCall(rtc);
  stopRemote();
  stopRecorder();
  closeAudio(audio);
  ws = rtc = audio = null;
  stopPlayback();
  resetLatency();
  showLevel(0);
  setState("disconnected");
}

function onSocketClosed(e) {
  ws = null;
  if (client.state !== "disconnected") {
    showError(`Connection closed (${e.code}${e.reason ? `: ${e.reason}` : ""})`);
    teardown();
  }
}

function onCallLost(call, message) {
  if (rtc === call && client.state !== "disconnected") {
    showError(message);
    teardown();
  }
}

function send(event) {
  const text = JSON.stringify(event);
  return sendOnSocket(ws, text) || sendOnCall(rtc, text);
}

function onMicChunk(samples) {
  if (!audio || !audio.resampler) return;
  const pcm = audio.resampler.push(samples);
  if (pcm.length && client.state === "connected") {
    send({ type: "input_audio_buffer.append", audio: toBase64(encodePcm16(pcm)) });
  }
}

// ------------------------------------------------------------------ server events

const handlers = {
  "session.created": (ev) => showSession(ev.session),
  "session.updated": (ev) => showSession(ev.session),
  "input_audio_buffer.speech_started": onSpeechStarted,
  "conversation.item.added": showItem,
  "conversation.item.input_audio_transcription.completed": showUserTranscript,
  "conversation.item.input_audio_transcription.failed": (ev) => {
    showUserTranscript({ item_id: ev.item_id, transcript: "" });
    showError((ev.error && ev.error.message) || "transcription failed");
  },
  "x.voice.input_audio_transcription.interim": showInterimTranscript,
  "response.created": (ev) => ensureResponse(ev.response.id),
  "response.output_audio.delta": onAudioDelta,
  "response.output_audio_transcript.delta": showTranscriptDelta,
  "response.done": (ev) => {
    holdRemote(false);
    showResponseDone(ev);
  },
  "output_audio_buffer.started": (ev) => agentStarted(ev.response_id),
  "output_audio_buffer.stopped": (ev) => agentStopped(ev.response_id),
  "output_audio_buffer.cleared": onAudioCleared,
  "x.voice.turn.metrics": showMetrics,
  "x.voice.output_audio.held": () => rtc && holdRemote(true),
  "x.voice.output_audio.resumed": () => holdRemote(false),
  error: (ev) => showError((ev.error && ev.error.message) || "unknown error"),
};

function onEvent(ev) {
  if (ev.type !== "response.output_audio.delta") logEvent(ev);
  const handler = handlers[ev.type];
  if (handler) handler(ev);
}

function logEvent(ev) {
  client.events.push(ev.type);
  const rid = ev.response_id || (ev.response && ev.response.id) || undefined;
  const status = ev.response && ev.response.status;
  client.eventLog.push({ type: ev.type, t: performance.now(), response_id: rid, status });
  if (client.events.length > MAX_EVENTS) client.events.shift();
  if (client.eventLog.length > MAX_EVENTS) client.eventLog.shift();
}

function onSpeechStarted(ev) {
  if (isPlaying()) { // WebSocket barge-in: silence the agent at once, drop the rest of that reply
    const r = findResponse(cutPlayback());
    client.bargeIns++;
    if (r) markBubble(r.bubble, "interrupted");
  }
  userBubble(ev.item_id);
}

// WebRTC barge-in: the server flushed the agent's audio (the caller cut in)
function onAudioCleared(ev) {
  holdRemote(false); // the server sends silence now: nothing of that reply is left to hear
  const r = ensureResponse(ev.response_id);
  client.bargeIns++;
  markBubble(r.bubble, "interrupted");
  agentStopped(ev.response_id);
}

function onAudioDelta(ev) {
  if (playingResponse() !== ev.response_id && !isMuted(ev.response_id)) agentStarted(ev.response_id);
  playDelta(audio, ev);
}

// ------------------------------------------------------------------ settings

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

function init() {
  takeSecretFromUrl();
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
