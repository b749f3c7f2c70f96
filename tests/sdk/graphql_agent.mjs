// An agent using Octokit's GraphQL client (@octokit/graphql) through toolgate.
//
// Run by tests/it/graphql.rs with TOOLGATE_PROXY (http://AGENT:TOKEN@HOST:PORT),
// NODE_EXTRA_CA_CERTS (toolgate's CA) and SDK_RUN. The client reads no HTTPS_PROXY: it takes a
// `fetch` whose undici dispatcher is a ProxyAgent. Each step prints one JSON line:
// {"sdk", "step", "ok", "detail"}.
import { graphql } from "@octokit/graphql";
import { ProxyAgent, fetch as undiciFetch } from "undici";

const PROXY = process.env.TOOLGATE_PROXY;
const RUN = process.env.SDK_RUN || "run";
// The agent holds no real key; toolgate strips this one and injects the real credential.
const DUMMY_KEY = "agent-holds-no-real-key";

function report(sdk, step, ok, detail) {
  console.log(JSON.stringify({ sdk, step, ok, detail }));
}

async function step(sdk, name, fn) {
  try {
    report(sdk, name, true, await fn());
  } catch (e) {
    // What the client surfaced to the caller: its message, and the body it kept.
    const body = e?.response?.data ?? e?.errors ?? null;
    report(sdk, name, false, `${e?.constructor?.name}: ${e?.message} ${JSON.stringify(body)}`);
  }
}

const proxy = new URL(PROXY);
const dispatcher = new ProxyAgent({
  uri: `${proxy.protocol}//${proxy.host}`,
  token: `Basic ${Buffer.from(`${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`).toString("base64")}`,
});
const gql = graphql.defaults({
  headers: { authorization: `token ${DUMMY_KEY}` },
  request: { fetch: (url, opts) => undiciFetch(url, { ...opts, dispatcher }) },
});
const sdk = "octokit-graphql";

let repositoryId;
await step(sdk, "query", async () => {
  const { repository } = await gql(
    `query Repo($owner: String!, $name: String!) {
      repository(owner: $owner, name: $name) { id nameWithOwner }
    }`,
    { owner: "acme", name: "widgets" },
  );
  repositoryId = repository.id;
  return repository.nameWithOwner;
});
await step(sdk, "mutation", async () => {
  const { createIssue } = await gql(
    `mutation Open($input: CreateIssueInput!) {
      createIssue(input: $input) { issue { number url } }
    }`,
    { input: { repositoryId, title: `Octokit GraphQL ${RUN}`, body: "from @octokit/graphql" } },
  );
  return createIssue.issue.number;
});
await step(sdk, "refused_mutation", async () => {
  const { deleteIssue } = await gql(
    `mutation { deleteIssue(input: { issueId: "I_42" }) { clientMutationId } }`,
  );
  return deleteIssue;
});
