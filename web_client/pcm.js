// PCM16 ⇄ float samples, base64, and a streaming resampler.

export const RATE = 24000; // WebSocket wire format: audio/pcm, 24 kHz, mono, 16-bit little-endian

export function encodePcm16(samples) {
  const view = new DataView(new ArrayBuffer(samples.length * 2));
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Uint8Array(view.buffer);
}

export function decodePcm16(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, true) / 32768;
  return out;
}

export function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

export function fromBase64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

// Streaming resampler: box-filter decimation when shrinking a lot, linear interpolation otherwise.
export class Resampler {
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
