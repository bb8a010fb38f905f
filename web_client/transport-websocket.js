// The WebSocket transport: JSON events both ways, the audio inside them as base64 PCM16.
// x_voice_events=1 asks for the server's x.voice.* events (turn metrics, interim transcripts).
import { socketProtocols } from "./credentials.js";

export const socketUrl = () =>
  `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/v1/realtime?x_voice_events=1`;

// Resolves with the open socket; `onClosed(closeEvent)` fires if it closes after that.
export function openSocket(url, { onEvent, onClosed }) {
  return new Promise((resolve, reject) => {
    const sock = new WebSocket(url, socketProtocols());
    sock.onopen = () => {
      sock.onclose = onClosed;
      resolve(sock);
    };
    sock.onerror = () => reject(new Error(`WebSocket to ${url} failed`));
    sock.onclose = (e) => reject(new Error(`WebSocket closed (${e.code})`));
    sock.onmessage = (msg) => onEvent(JSON.parse(msg.data));
  });
}

export function closeSocket(sock) {
  if (!sock) return;
  sock.onopen = sock.onclose = sock.onmessage = sock.onerror = null;
  if (sock.readyState <= WebSocket.OPEN) sock.close(1000, "client disconnect");
}

export function sendOnSocket(sock, text) {
  if (!sock || sock.readyState !== WebSocket.OPEN) return false;
  sock.send(text);
  return true;
}
