// The microphone: the AudioContext, the mic stream, the levels of the mic and of the agent's
// voice (level meter, voiceClient.levels: levels.js, on the audio thread), and, for the
// WebSocket transport, the PCM capture (AudioWorklet, else ScriptProcessor) and the bus that
// playback goes through.
import { client } from "./client.js";
import { $ } from "./dom.js";
import { levelsNode } from "./levels.js";
import { RATE, Resampler } from "./pcm.js";
import { setInfo } from "./status.js";

export const LOUD = 0.015; // a peak above this (≈ 500 in PCM16) is sound, not silence
const CHUNK_MS = 20; // how much mic audio goes into one append event
const LEVEL_STEP_MS = 10; // resolution of voiceClient.levels (each step: its loudest quantum)
const MAX_LEVELS = 120000; // 20 minutes of levels
const METER_MS = 50; // how often the level meter is redrawn

let level = 0;

export const micConstraints = () => ({
  echoCancellation: $("echo-cancellation").checked,
  noiseSuppression: $("noise-suppression").checked,
  autoGainControl: $("auto-gain").checked,
});

// → {ctx, stream, nodes[], agentTap, levels} and, with `onChunk` (called with mono mic samples at the
// context's rate), also {agentBus, agentStream, resampler}. What reaches `agentTap` is the
// agent's voice as played. `onPeaks(t, micPeak, agentPeak)` runs for each render quantum, in
// order, `t` its time (performance.now() ms on the audio clock: levels.js).
export async function startAudio(constraints, { onChunk = null, onPeaks }) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("microphone access needs HTTPS or localhost");
  }
  const { ctx, stream } = await openMic(constraints);
  const source = ctx.createMediaStreamSource(stream);
  const mute = ctx.createGain(); // nodes must reach the destination to be pulled
  mute.gain.value = 0;
  mute.connect(ctx.destination);
  const t0 = performance.now();
  client.levels = { t0, stepMs: LEVEL_STEP_MS, loud: LOUD, clock: "audio", mic: [], agent: [] };
  const meter = { peak: 0, drawn: t0 };
  const levels = await levelsNode(ctx, (t, micPeak, agentPeak) => {
    onPeaks(t, micPeak, agentPeak);
    keepLevels(t, micPeak, agentPeak);
    meterPeak(meter, t, micPeak);
  });
  const agentTap = ctx.createGain();
  source.connect(levels, 0, 0);
  agentTap.connect(levels, 0, 1);
  levels.connect(mute);
  const mic = { ctx, stream, nodes: [source, mute, levels, agentTap], agentTap, levels };
  if (onChunk) await addCapture(mic, source, mute, onChunk);
  return mic;
}

async function openMic(constraints) {
  const ctx = new AudioContext({ latencyHint: "interactive" });
  try {
    await ctx.resume();
    const stream = await navigator.mediaDevices.getUserMedia({ audio: constraints });
    return { ctx, stream };
  } catch (err) {
    ctx.close().catch(() => {});
    throw err;
  }
}

async function addCapture(mic, source, mute, onChunk) {
  const ctx = mic.ctx;
  const chunk = Math.round((ctx.sampleRate * CHUNK_MS) / 1000);
  const node = ctx.audioWorklet ? await workletCapture(ctx, chunk, onChunk) : scriptCapture(ctx, onChunk);
  source.connect(node);
  node.connect(mute);
  const bus = ctx.createGain(); // WebSocket playback: → speakers, levels and recorder
  bus.connect(ctx.destination);
  bus.connect(mic.agentTap);
  const tap = ctx.createMediaStreamDestination();
  bus.connect(tap);
  Object.assign(mic, { agentBus: bus, agentStream: tap.stream, resampler: new Resampler(ctx.sampleRate, RATE) });
  mic.nodes.push(node, bus, tap);
  const mode = ctx.audioWorklet ? "AudioWorklet" : "ScriptProcessor";
  setInfo("mic", `mic ${ctx.sampleRate} Hz (${mode}) → ${RATE / 1000} kHz PCM16`);
}

export function closeAudio(mic) {
  if (!mic) return;
  mic.levels.port.onmessage = null; // a batch still on its way is not this call's any more
  mic.stream.getTracks().forEach((t) => t.stop());
  mic.nodes.forEach((n) => n.disconnect());
  mic.ctx.close().catch(() => {});
}

// ------------------------------------------------------------------ capture

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

// ------------------------------------------------------------------ levels

function meterPeak(meter, t, micPeak) {
  meter.peak = Math.max(meter.peak, micPeak);
  if (t - meter.drawn < METER_MS) return;
  showLevel(Math.min(1, Math.max(0, (20 * Math.log10(meter.peak + 1e-6) + 60) / 60))); // -60…0 dBFS
  Object.assign(meter, { peak: 0, drawn: t });
}

function keepLevels(now, micPeak, agentPeak) {
  const lv = client.levels;
  const i = Math.floor((now - lv.t0) / LEVEL_STEP_MS);
  if (i < 0 || i >= MAX_LEVELS) return;
  while (lv.mic.length <= i) { lv.mic.push(0); lv.agent.push(0); }
  lv.mic[i] = Math.max(lv.mic[i], round3(micPeak));
  lv.agent[i] = Math.max(lv.agent[i], round3(agentPeak));
}

const round3 = (x) => Math.round(x * 1000) / 1000;

// The level meter; 0 resets it.
export function showLevel(value) {
  level = Math.max(value, level * 0.85);
  if (value === 0) level = 0;
  const meter = $("meter");
  meter.firstElementChild.style.width = `${(level * 100).toFixed(1)}%`;
  meter.setAttribute("aria-valuenow", String(Math.round(level * 100)));
}
