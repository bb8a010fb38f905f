// The WebRTC transport, the OpenAI-compatible flow: the mic track and a data channel
// "oai-events" on a peer connection; the SDP offer is POSTed to /v1/realtime/calls (after ICE
// gathering, so it carries our candidates) and the answer applied. The agent's voice comes
// back as an Opus track. x_voice_events=1 asks for the server's x.voice.* events (turn metrics,
// interim transcripts) on the data channel.
import { client } from "./client.js";
import { authHeaders } from "./credentials.js";
import { setInfo } from "./status.js";

const ICE_WAIT_MS = 3000; // longest wait for ICE gathering before the offer goes anyway
const OPEN_WAIT_MS = 20000; // longest wait for the data channel to open
const CALLS = "/v1/realtime/calls?x_voice_events=1";

// A call not yet started: {pc, channel, location}. Hold it before startCall, so that closeCall
// can end it whatever point the start reaches.
export const newCall = () => ({ pc: new RTCPeerConnection({ iceServers: [] }), channel: null, location: null });

// hooks: onEvent(event), onTrack(stream) for the agent's voice, onLost(call, message) when the
// connection fails or the data channel closes. `stale()` says the caller gave up meanwhile.
export async function startCall(call, stream, stale, { onEvent, onTrack, onLost }) {
  const pc = call.pc;
  const track = stream.getAudioTracks()[0];
  pc.addTrack(track, stream);
  const channel = pc.createDataChannel("oai-events");
  call.channel = channel;
  channel.onmessage = (msg) => {
    if (typeof msg.data === "string") onEvent(JSON.parse(msg.data));
  };
  const opened = channelOpened(channel);
  pc.ontrack = (e) => {
    playSoon(e.receiver);
    onTrack(e.streams[0] || new MediaStream([e.track]));
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed") onLost(call, "WebRTC connection failed");
  };
  const answer = await offer(call, stale);
  if (answer === null) return;
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  await opened;
  if (stale()) return;
  channel.onclose = () => onLost(call, "The call ended (data channel closed)");
  setInfo("mic", `mic → WebRTC (Opus ${track.getSettings().sampleRate || 48000} Hz)`);
}

// The agent's voice is played as soon as the network lets it: Chromium's jitter buffer aims as
// low as it can (jitterBufferTarget, ms; its default adapts upwards from ~tens of ms). What it
// was set to is kept for the benchmark (voiceClient.jitterBufferTarget).
function playSoon(receiver) {
  if ("jitterBufferTarget" in receiver) receiver.jitterBufferTarget = 0;
  else if ("playoutDelayHint" in receiver) receiver.playoutDelayHint = 0; // older Chromium, in s
  client.jitterBufferTarget = receiver.jitterBufferTarget ?? receiver.playoutDelayHint ?? null;
}

function channelOpened(channel) {
  const opened = new Promise((resolve, reject) => {
    channel.onopen = resolve;
    channel.onclose = () => reject(new Error("the data channel closed"));
    setTimeout(() => reject(new Error(`no data channel after ${OPEN_WAIT_MS / 1000} s`)), OPEN_WAIT_MS);
  });
  opened.catch(() => {}); // awaited later; avoids an unhandled rejection if we bail out first
  return opened;
}

// Makes the offer and POSTs it; the SDP answer, or null if `stale()` meanwhile.
async function offer(call, stale) {
  const pc = call.pc;
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc, ICE_WAIT_MS);
  if (stale()) return null;
  const sdp = pc.localDescription.sdp;
  client.localCandidates = sdp.split(/\r?\n/).filter((l) => l.startsWith("a=candidate"));
  const resp = await fetch(CALLS, {
    method: "POST",
    headers: { "Content-Type": "application/sdp", ...authHeaders() },
    body: sdp,
  });
  const answer = await resp.text();
  if (resp.status !== 201) throw new Error(`POST ${CALLS}: ${resp.status} ${answer.trim()}`);
  call.location = resp.headers.get("Location");
  client.callLocation = call.location;
  if (stale()) {
    await hangUp(call.location);
    return null;
  }
  return answer;
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

// The agent's track as Chromium's receiver reports it (getStats, inbound-rtp audio): its jitter
// buffer's mean delay, target and minimum (ms per emitted sample), concealment, and the audio
// per packet each way (ms: the agent's frames, and the page's own as its encoder cut them); for
// the benchmark, which reads it through voiceClient.receiverStats().
export async function receiverStats(call) {
  if (!call) return null;
  const stats = await call.pc.getStats();
  let inbound = null, outbound = null, source = null;
  for (const s of stats.values()) {
    if (s.kind !== "audio") continue;
    if (s.type === "inbound-rtp") inbound = s;
    else if (s.type === "outbound-rtp") outbound = s;
    else if (s.type === "media-source") source = s;
  }
  if (!inbound) return null;
  const s = inbound;
  const per = (total) => (s.jitterBufferEmittedCount ? (1000 * total) / s.jitterBufferEmittedCount : null);
  const sent = outbound && source && outbound.packetsSent ? (1000 * source.totalSamplesDuration) / outbound.packetsSent : null;
  return {
    jitterBufferDelayMs: per(s.jitterBufferDelay),
    jitterBufferTargetDelayMs: per(s.jitterBufferTargetDelay),
    jitterBufferMinimumDelayMs: per(s.jitterBufferMinimumDelay),
    jitterMs: s.jitter === undefined ? null : 1000 * s.jitter,
    packetsReceived: s.packetsReceived, packetsLost: s.packetsLost,
    concealedSamples: s.concealedSamples, totalSamplesReceived: s.totalSamplesReceived,
    insertedSamplesForDeceleration: s.insertedSamplesForDeceleration,
    removedSamplesForAcceleration: s.removedSamplesForAcceleration,
    receivedPacketMs: s.packetsReceived ? (1000 * s.totalSamplesDuration) / s.packetsReceived : null,
    sentPacketMs: sent,
  };
}

export function sendOnCall(call, text) {
  if (!call || !call.channel || call.channel.readyState !== "open") return false;
  call.channel.send(text);
  return true;
}

export function closeCall(call) {
  if (!call) return;
  const { pc, channel } = call;
  if (channel) channel.onopen = channel.onclose = channel.onmessage = null;
  pc.ontrack = pc.onconnectionstatechange = null;
  if (!call.location) return pc.close();
  // hang up before closing, so the server ends the call on our word, not on a dead channel
  const timer = setTimeout(() => pc.close(), 2000);
  hangUp(call.location).finally(() => {
    clearTimeout(timer);
    pc.close();
  });
}

export function hangUp(where) {
  if (!where) return Promise.resolve();
  return fetch(`${where}/hangup`, { method: "POST", keepalive: true, headers: authHeaders() }).catch(() => {});
}
