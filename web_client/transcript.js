// The conversation view: a bubble per user item and per response, the agent's text as it
// streams, and for an interrupted reply what was heard followed by the struck-through rest.
import { client } from "./client.js";
import { $, el } from "./dom.js";

const responses = new Map(); // response_id → {turn, bubble, shown}
const userBubbles = new Map(); // item_id → bubble

// ------------------------------------------------------------------ responses

export const findResponse = (id) => responses.get(id);

// The response's entry, made (with its turn in voiceClient.turns and its bubble) on first sight.
export function ensureResponse(id) {
  let r = responses.get(id);
  if (!r) {
    const turn = { response_id: id, status: "in_progress", transcript: "" };
    Object.assign(turn, { metrics: null, pageLatencyMs: null });
    client.turns.push(turn);
    r = { turn, bubble: addBubble("agent"), shown: "" };
    r.bubble.classList.add("pending");
    responses.set(id, r);
  }
  return r;
}

// ------------------------------------------------------------------ server events

export function showItem(ev) {
  const item = ev.item || {};
  if (item.role !== "user") return;
  const bubble = userBubble(item.id);
  const part = (item.content || [])[0] || {};
  if (part.type === "input_text") setText(bubble, part.text || "");
}

export function showUserTranscript(ev) {
  const bubble = userBubble(ev.item_id);
  const text = (ev.transcript || "").trim();
  setText(bubble, text || "(nothing recognised)");
  bubble.classList.toggle("unheard", !text);
  bubble.classList.remove("interim");
}

// The words so far, while the caller is still speaking (the server's streaming ASR).
export function showInterimTranscript(ev) {
  const bubble = userBubble(ev.item_id);
  const shown = bubble.querySelector(".text").textContent;
  if (!bubble.classList.contains("interim") && shown !== "…") return; // already final
  const text = (ev.transcript || "").trim();
  setText(bubble, text || "…");
  bubble.classList.add("interim");
  client.interim.push(text);
}

export function showTranscriptDelta(ev) {
  const r = ensureResponse(ev.response_id);
  r.shown += ev.delta;
  setText(r.bubble, r.shown);
}

export function showResponseDone(ev) {
  const resp = ev.response;
  const r = ensureResponse(resp.id);
  const part = (((resp.output || [])[0] || {}).content || [])[0];
  const final = part ? part.transcript || part.text || "" : r.shown; // for cancelled: what was heard
  Object.assign(r.turn, { status: resp.status, transcript: final });
  r.bubble.classList.remove("pending");
  if (resp.status === "cancelled") {
    showCut(r, final);
    markBubble(r.bubble, "interrupted");
  } else {
    setText(r.bubble, final);
    if (resp.status === "failed") markBubble(r.bubble, "failed");
  }
}

// ------------------------------------------------------------------ bubbles

export function userBubble(itemId) {
  let bubble = userBubbles.get(itemId);
  if (!bubble) {
    bubble = addBubble("user");
    setText(bubble, "…");
    userBubbles.set(itemId, bubble);
  }
  return bubble;
}

function addBubble(role) {
  const box = $("transcript");
  const empty = box.querySelector(".empty");
  if (empty) empty.remove();
  const bubble = el("div", `msg ${role}`);
  bubble.append(el("span", "who", role === "user" ? "You" : "Agent"), el("p", "text"));
  const stick = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  box.append(bubble);
  if (stick) box.scrollTop = box.scrollHeight;
  return bubble;
}

function setText(bubble, said, cut = "") {
  const text = bubble.querySelector(".text");
  text.textContent = said;
  if (!cut) return keepScrolled();
  const del = el("del", "cut", cut);
  del.title = "generated but not heard";
  text.append(said ? " " : "", del);
  keepScrolled();
}

function showCut(r, heardText) {
  const end = heardEnd(r.shown, heardText);
  const cut = end < 0 ? "" : r.shown.slice(end).trim();
  setText(r.bubble, heardText || (cut ? "" : "(stopped before speaking)"), cut);
}

// Index in `shown` just past the `heard` prefix, ignoring whitespace differences; -1 if no prefix.
function heardEnd(shown, heardText) {
  let i = 0, j = 0;
  while (j < heardText.length && i < shown.length) {
    if (shown[i] === heardText[j]) { i++; j++; }
    else if (/\s/.test(heardText[j])) j++;
    else if (/\s/.test(shown[i])) i++;
    else return -1;
  }
  while (j < heardText.length && /\s/.test(heardText[j])) j++;
  return j >= heardText.length ? i : -1;
}

// label: "interrupted" or "failed"
export function markBubble(bubble, label) {
  bubble.classList.add(label);
  if (bubble.querySelector(".marker")) return;
  bubble.querySelector(".who").after(el("span", "marker", label));
}

function keepScrolled() {
  const box = $("transcript");
  if (box.scrollHeight - box.scrollTop - box.clientHeight < 120) box.scrollTop = box.scrollHeight;
}
