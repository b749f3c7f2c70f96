// Node clients through toolgate's TLS proxy listener (HTTPS_PROXY=https://…): undici's
// ProxyAgent and https-proxy-agent, each with TLS to toolgate and toolgate's own TLS inside the
// tunnel. Run by tests/it/tls_listeners.rs with TOOLGATE_PROXY (https://AGENT:TOKEN@HOST:PORT),
// TOOLGATE_CA_BUNDLE (the listener's CA and toolgate's in one PEM file) and SDK_RUN. Each step
// prints one JSON line: {"client", "step", "status", "body"}.
import fs from "node:fs";
import https from "node:https";
import { HttpsProxyAgent } from "https-proxy-agent";
import { ProxyAgent, fetch } from "undici";

const PROXY = process.env.TOOLGATE_PROXY;
const ca = fs.readFileSync(process.env.TOOLGATE_CA_BUNDLE);
const RUN = process.env.SDK_RUN ?? "run";
const API = "https://api.stripe.com";

function report(client, step, status, body) {
  console.log(JSON.stringify({ client, step, status, body }));
}

async function steps(client, post, get) {
  try {
    const [, body] = await post("/v1/customers", { email: `${client}-${RUN}@acme.com` }, `${client}-cust-${RUN}`);
    const customer = JSON.parse(body).id;
    report(client, "read", ...(await get(`/v1/customers/${customer}`)));
    const bad = { email: `${client}2-${RUN}@acme.com`, tax_exempt: "sometimes" };
    report(client, "refused", ...(await post("/v1/customers", bad, `${client}-bad-${RUN}`)));
    const refund = { payment_intent: `pi_${client}_${RUN}`, amount: "300" };
    report(client, "held", ...(await post("/v1/refunds", refund, `${client}-refund-${RUN}`)));
  } catch (e) {
    report(client, "error", 0, `${e?.constructor?.name}: ${e?.message} ${e?.cause ?? ""}`);
  }
}

// undici: the proxy's credentials as a token, TLS settings for the proxy and for the API.
const proxy = new URL(PROXY);
const user = `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`;
const dispatcher = new ProxyAgent({
  uri: `${proxy.protocol}//${proxy.host}`,
  token: `Basic ${Buffer.from(user).toString("base64")}`,
  proxyTls: { ca },
  requestTls: { ca },
});
await steps(
  "undici",
  async (path, form, key) => {
    const r = await fetch(API + path, { method: "POST", body: new URLSearchParams(form), headers: { "idempotency-key": key }, dispatcher });
    return [r.status, await r.text()];
  },
  async (path) => {
    const r = await fetch(API + path, { dispatcher });
    return [r.status, await r.text()];
  },
);

// https-proxy-agent: the credentials in the proxy URL; `ca` for the proxy (agent) and the API.
const agent = new HttpsProxyAgent(PROXY, { ca });
function request(method, path, form, key) {
  return new Promise((resolve, reject) => {
    const body = form ? new URLSearchParams(form).toString() : undefined;
    const headers = body ? { "content-type": "application/x-www-form-urlencoded", "idempotency-key": key } : {};
    const req = https.request(API + path, { method, agent, ca, headers }, (res) => {
      let data = "";
      res.on("data", (c) => (data += c));
      res.on("end", () => resolve([res.statusCode, data]));
    });
    req.on("error", reject);
    req.end(body);
  });
}
await steps(
  "https-proxy-agent",
  (path, form, key) => request("POST", path, form, key),
  (path) => request("GET", path),
);
