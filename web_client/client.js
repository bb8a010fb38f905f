// The page's state as tests and benchmarks see it (window.voiceClient; app.js adds the methods):
//   events     received event types (no audio deltas); eventLog: {type, t, response_id, status}
//   turns      one entry per response: status, transcript, server metrics, pageLatencyMs
//   latencies  page-side voice-to-voice: last caller speech → first agent audio heard
//   levels     peak level per step (stepMs) of the mic and of the agent's voice since t0, read on
//              the audio thread and timed on the audio clock (levels.js)
//   localCandidates  the a=candidate lines of the WebRTC offer
//   jitterBufferTarget  what the page asked of Chromium's jitter buffer for the agent's voice
//   interim    the caller's words so far, as shown while they spoke (the server's streaming ASR)
// Times are performance.now() milliseconds.

export const client = {
  state: "disconnected", transport: null, events: [], eventLog: [], turns: [], bargeIns: 0,
  latencies: [], interim: [], levels: null, localCandidates: [], connectedAt: null, callLocation: null,
  jitterBufferTarget: null,
};
