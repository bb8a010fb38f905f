// Latency: the server's per-turn metrics (x.voice.turn.metrics) and the page-side
// voice-to-voice time, shown under each reply and in the Latency panel.
import { client } from "./client.js";
import { $, el } from "./dom.js";
import { LOUD } from "./microphone.js";
import { ensureResponse, findResponse } from "./transcript.js";

const MIC_QUIET_MS = 300; // a reply can only start after this much caller silence
// Server marks (ms after the end of the caller's speech); first_audio_sent is voice-to-voice.
const STAGES = [["turn_end", "turn end"], ["asr_done", "ASR"],
  ["llm_first_token", "LLM 1st token"], ["tts_first_audio", "TTS 1st audio"]];

const heard = { micLastLoud: -Infinity, agentLastLoud: -Infinity, awaiting: false, pending: null };
let agentResponseId = null; // the response whose audio is playing

export const playingResponse = () => agentResponseId;

export function resetLatency() {
  agentResponseId = null;
  Object.assign(heard, { micLastLoud: -Infinity, agentLastLoud: -Infinity, awaiting: false, pending: null });
}

// ------------------------------------------------------------------ page-side latency

// Page-side latency: the last time the mic carried speech → the first agent sound after it.
// An agent sound counts as a reply only after MIC_QUIET_MS of caller silence (the server needs
// more to end a turn) and if the agent was silent since the caller's speech ended — so the
// agent's own voice still playing while the caller cuts in is not taken for a reply.
export function notePeaks(now, micPeak, agentPeak) {
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
}

function onAgentHeard(speechEnd, at) {
  const entry = { ms: Math.round(at - speechEnd), speechEnd, heardAt: at, response_id: null };
  client.latencies.push(entry);
  const r = agentResponseId && findResponse(agentResponseId);
  if (r && r.turn.pageLatencyMs === null) assignLatency(r, entry);
  else heard.pending = entry; // the response's first event has not arrived yet
}

function assignLatency(r, entry) {
  entry.response_id = r.turn.response_id;
  r.turn.pageLatencyMs = entry.ms;
  renderLatency(r);
}

export function agentStarted(responseId) {
  agentResponseId = responseId;
  const r = ensureResponse(responseId);
  const entry = heard.pending;
  heard.pending = null;
  if (entry && r.turn.pageLatencyMs === null && performance.now() - entry.heardAt < 5000) {
    assignLatency(r, entry);
  }
}

export function agentStopped(responseId) {
  if (agentResponseId === responseId) agentResponseId = null;
}

// ------------------------------------------------------------------ server metrics + views

export function showMetrics(ev) {
  const r = ensureResponse(ev.response_id);
  r.turn.metrics = ev.metrics_ms || null;
  renderLatency(r);
}

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
