// The status bar: connection state (and the buttons it enables), session info, errors.
import { client } from "./client.js";
import { $, el } from "./dom.js";

const info = { mic: "", session: "" };

export function setState(state) {
  client.state = state;
  const badge = $("state");
  badge.textContent = state;
  badge.dataset.state = state;
  $("connect").disabled = state !== "disconnected";
  $("disconnect").disabled = state === "disconnected";
  $("apply").disabled = state !== "connected";
  $("transport").disabled = state !== "disconnected";
}

// key: "mic" or "session"
export function setInfo(key, text) {
  info[key] = text;
  $("session-info").textContent = [info.session, info.mic].filter(Boolean).join(" · ");
}

export function showError(message) {
  const list = $("errors");
  list.prepend(el("li", "", `${new Date().toLocaleTimeString()} ${message}`));
  while (list.children.length > 5) list.lastElementChild.remove();
}
