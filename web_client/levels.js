// Levels, read on the audio thread: an AudioWorklet with two inputs, the mic (0) and the
// agent's voice as the page plays it (1), takes the peak of each per render quantum (128
// frames, 2.7 ms at 48 kHz) and posts them in batches. Each quantum is stamped with its frame
// on the AudioContext's clock, so both ends of a measurement (the caller's last speech, the
// agent's first sound or its last before a barge-in) are read on one sample clock, not on the
// main thread's timers: no polling interval, no analyser window, and a busy page only delays
// when a batch is handled, never the times it carries. Frames map onto performance.now()
// through the context's output timestamp, read again for every batch: an output device that
// falls behind (Chromium's fake one skips callbacks on a loaded machine: 40-400 ms over a few
// minutes here) moves the audio clock against performance.now(), and the page's times are
// compared with events stamped by performance.now() (the benchmark's split of the page's path).

const BATCH = 8; // quanta per message (~21 ms)

const WORKLET = `registerProcessor("voice-levels", class extends AudioWorkletProcessor {
  constructor() { super(); this.fresh(); }
  fresh() { this.batch = []; }
  peak(chans) {
    let peak = 0;
    for (const ch of chans || []) for (let i = 0; i < ch.length; i++) {
      const a = ch[i] < 0 ? -ch[i] : ch[i];
      if (a > peak) peak = a;
    }
    return peak;
  }
  process([mic, agent]) {
    this.batch.push(currentFrame, this.peak(mic), this.peak(agent));
    if (this.batch.length >= ${BATCH} * 3) { this.port.postMessage(this.batch); this.fresh(); }
    return true;
  }
});`;

// → an AudioWorkletNode whose inputs 0 and 1 are the mic and the agent's voice; `onQuantum(t,
// micPeak, agentPeak)` is called for each render quantum in order, `t` in performance.now() ms.
export async function levelsNode(ctx, onQuantum) {
  const url = URL.createObjectURL(new Blob([WORKLET], { type: "application/javascript" }));
  try { await ctx.audioWorklet.addModule(url); } finally { URL.revokeObjectURL(url); }
  const node = new AudioWorkletNode(ctx, "voice-levels", {
    numberOfInputs: 2, numberOfOutputs: 1, outputChannelCount: [1],
  });
  node.port.onmessage = ({ data }) => {
    const offsetMs = clockOffset(ctx); // performance.now() − the context's time, in ms
    for (let i = 0; i < data.length; i += 3) {
      onQuantum(offsetMs + (data[i] / ctx.sampleRate) * 1000, data[i + 1], data[i + 2]);
    }
  };
  return node;
}

function clockOffset(ctx) {
  const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
  if (ts && ts.performanceTime > 0) return ts.performanceTime - ts.contextTime * 1000;
  return performance.now() - ctx.currentTime * 1000;
}
