// The agent's voice: WebSocket playback (PCM16 deltas scheduled on WebAudio, cut at a
// barge-in), the WebRTC remote track (played by #agent-audio, analysed by WebAudio), and, for
// tests only (the page opened with ?record), a MediaRecorder recording of it
// (window.voiceClient.recording()): it costs an Opus encoder in the browser for the whole call
// and keeps every byte, so a caller's page does not run it.
import { $ } from "./dom.js";
import { RATE, decodePcm16, encodePcm16, fromBase64, toBase64 } from "./pcm.js";
import { showError } from "./status.js";

const LEAD_S = 0.04; // playback jitter margin when (re)starting the audio queue

const player = { next: 0, sources: new Set(), responseId: null };
const muted = new Set(); // response ids whose audio was cut by a barge-in (WebSocket)
let rec = null; // {recorder, chunks, stopped: Promise}
const RECORD = new URLSearchParams(location.search).has("record");

// ------------------------------------------------------------------ WebSocket playback

// `audio`: what microphone.startAudio returned (its ctx and agentBus).
export function playDelta(audio, ev) {
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

export const isPlaying = () => player.sources.size > 0;
export const isMuted = (responseId) => muted.has(responseId);

// Barge-in: silence the agent at once and drop the rest of that reply; → its response id.
export function cutPlayback() {
  muted.add(player.responseId);
  stopPlayback();
  return player.responseId;
}

export function stopPlayback() {
  for (const src of player.sources) {
    src.onended = null;
    try { src.stop(); } catch (_) { /* never started */ }
  }
  player.sources.clear();
  player.next = 0;
}

// ------------------------------------------------------------------ WebRTC remote track

const remote = { gain: null, held: false }; // the tap's gain, mirroring the element's mute

export function playRemote(audio, stream) {
  const speaker = $("agent-audio");
  speaker.srcObject = stream;
  speaker.muted = remote.held = false;
  speaker.play().catch((err) => showError(`Cannot play the agent's audio: ${err.message || err}`));
  if (!audio) return;
  // WebAudio reads a remote stream only while a media element plays it too (Chromium)
  const source = audio.ctx.createMediaStreamSource(stream);
  remote.gain = audio.ctx.createGain();
  source.connect(remote.gain);
  remote.gain.connect(audio.agentTap);
  audio.nodes.push(source, remote.gain);
  record(stream);
}

// The server held the agent's voice (x.voice.output_audio.held: the caller may be cutting in):
// it sends silence from now on, but Chromium's jitter buffer still holds tens of ms of the
// reply, so the page mutes the track too; `false` (resumed, cleared, the response's end)
// plays it again.
export function holdRemote(held) {
  if (held === remote.held) return;
  remote.held = held;
  $("agent-audio").muted = held;
  if (remote.gain) remote.gain.gain.setValueAtTime(held ? 0 : 1, remote.gain.context.currentTime);
}

export function stopRemote() {
  $("agent-audio").srcObject = null;
  remote.gain = null;
  remote.held = false;
}

// ------------------------------------------------------------------ recording the agent

export function record(stream) {
  stopRecorder();
  if (!RECORD || typeof MediaRecorder === "undefined") return;
  const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm"]
    .find((t) => MediaRecorder.isTypeSupported(t));
  const recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
  const chunks = [];
  recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
  const stopped = new Promise((resolve) => (recorder.onstop = resolve));
  recorder.start(1000);
  rec = { recorder, chunks, stopped };
}

export function stopRecorder() {
  if (rec && rec.recorder.state !== "inactive") rec.recorder.stop();
}

// The agent's voice recorded so far (this call, or the last one): 16 kHz mono PCM16, base64.
export async function recording() {
  if (!RECORD) throw new Error("not recording: open the page with ?record");
  if (!rec) throw new Error("nothing recorded: connect first");
  const { recorder, chunks } = rec;
  await flush(rec);
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

// Until the recorder has handed over all it has: a requestData() while recording, else its stop.
async function flush({ recorder, stopped }) {
  if (recorder.state !== "recording") return stopped;
  const flushed = new Promise((resolve) => recorder.addEventListener("dataavailable", resolve, { once: true }));
  recorder.requestData();
  await flushed;
}
