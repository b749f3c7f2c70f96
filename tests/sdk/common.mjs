// What the Node agents share: a `fetch` that goes through toolgate, and the step reports the
// Rust tests read (one JSON line a step: {"sdk", "step", "ok", "detail"}).
import { ProxyAgent, fetch as undiciFetch } from "undici";

// undici's fetch with a ProxyAgent for TOOLGATE_PROXY (http://AGENT:TOKEN@HOST:PORT), its
// credentials sent as Proxy-Authorization: for the clients that read no HTTPS_PROXY and take a
// `fetch` (Octokit's REST and GraphQL clients).
export function proxyFetch(proxyUrl) {
  const proxy = new URL(proxyUrl);
  const user = `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`;
  const dispatcher = new ProxyAgent({
    uri: `${proxy.protocol}//${proxy.host}`,
    token: `Basic ${Buffer.from(user).toString("base64")}`,
  });
  return (url, opts) => undiciFetch(url, { ...opts, dispatcher });
}

export function report(sdk, step, ok, detail) {
  console.log(JSON.stringify({ sdk, step, ok, detail }));
}

// Runs one step and reports what it returned, or what the client surfaced to the caller when
// it threw: its message, and the body it kept.
export async function step(sdk, name, fn) {
  try {
    report(sdk, name, true, await fn());
  } catch (e) {
    const body = e?.raw ?? e?.response?.data ?? e?.errors ?? null;
    report(sdk, name, false, `${e?.constructor?.name}: ${e?.message} ${JSON.stringify(body)}`);
  }
}
