// An agent using the official Node SDKs (stripe, @octokit/rest) through toolgate.
//
// Run by tests/sdk.rs with TOOLGATE_PROXY (http://AGENT:TOKEN@HOST:PORT), NODE_EXTRA_CA_CERTS
// (toolgate's CA) and SDK_RUN. Neither SDK reads HTTPS_PROXY: stripe-node takes an `httpAgent`,
// Octokit a `fetch` (common.mjs). Each step prints one JSON line:
// {"sdk", "step", "ok", "detail"}.
import Stripe from "stripe";
import { Octokit } from "@octokit/rest";
import { HttpsProxyAgent } from "https-proxy-agent";
import { proxyFetch, step } from "./common.mjs";

const PROXY = process.env.TOOLGATE_PROXY;
const RUN = process.env.SDK_RUN || "run";
// The agent holds no real key; toolgate strips this one and injects the real credential.
const DUMMY_KEY = "agent-holds-no-real-key";

async function stripeNode() {
  const stripe = new Stripe(DUMMY_KEY, {
    httpAgent: new HttpsProxyAgent(PROXY),
    maxNetworkRetries: 2,
  });
  const sdk = "stripe-node";
  let id;
  await step(sdk, "retried_write", async () => {
    const opts = { idempotencyKey: `node-cust-${RUN}` };
    const params = { email: `node-${RUN}@acme.com`, name: "Node" };
    const first = await stripe.customers.create(params, opts);
    const again = await stripe.customers.create(params, opts);
    if (first.id !== again.id) throw new Error(`two customers: ${first.id} ${again.id}`);
    id = first.id;
    return id;
  });
  await step(sdk, "read", async () => (await stripe.customers.retrieve(id)).email);
  await step(sdk, "held_write", async () =>
    (await stripe.refunds.create({ payment_intent: `pi_node_${RUN}`, amount: 900 }, { idempotencyKey: `node-refund-${RUN}` })).status,
  );
  await step(sdk, "refused_write", async () =>
    (await stripe.customers.create({ email: `node2-${RUN}@acme.com`, tax_exempt: "sometimes" }, { idempotencyKey: `node-bad-${RUN}` })).id,
  );
}

async function octokit() {
  const gh = new Octokit({ auth: DUMMY_KEY, request: { fetch: proxyFetch(PROXY) } });
  const sdk = "octokit";
  await step(sdk, "read", async () => (await gh.rest.repos.get({ owner: "acme", repo: "widgets" })).data.full_name);
  const issue = { owner: "acme", repo: "widgets", title: `Node held issue ${RUN}`, body: "from Octokit" };
  await step(sdk, "held_write", async () => (await gh.rest.issues.create(issue)).data.number);
  await step(sdk, "retried_write", async () => (await gh.rest.issues.create(issue)).data.number);
  await step(sdk, "refused_write", async () =>
    (await gh.rest.issues.create({ owner: "evilcorp", repo: "secrets", title: "exfiltrate" })).data.number,
  );
}

const which = process.argv.slice(2);
for (const name of which.length ? which : ["stripe", "github"]) {
  await { stripe: stripeNode, github: octokit }[name]();
}
