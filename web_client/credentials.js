// The page's credential. A page never holds an API key: on a server with API keys it uses a
// client secret (ek_…) that the operator's backend minted with a real key
// (POST /v1/realtime/client_secrets; see the README). The secret comes as ?secret=ek_… (taken
// off the address bar at once, so it stays out of history and bookmarks) or from the Secret box;
// with none, the page connects without a credential (a server without API keys).
import { $ } from "./dom.js";

export function takeSecretFromUrl() {
  const params = new URLSearchParams(location.search);
  const given = params.get("secret");
  if (!given) return;
  $("secret").value = given;
  params.delete("secret");
  const rest = params.toString();
  history.replaceState(null, "", `${location.pathname}${rest ? `?${rest}` : ""}${location.hash}`);
}

const secret = () => $("secret").value.trim();

// WebRTC: the SDP POST and the hangup carry it as a Bearer token.
export const authHeaders = () => (secret() ? { Authorization: `Bearer ${secret()}` } : {});

// WebSocket: a browser cannot set headers, so it rides the subprotocols, as at OpenAI.
export const socketProtocols = () =>
  secret() ? ["realtime", `openai-insecure-api-key.${secret()}`] : [];
