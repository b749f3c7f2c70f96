// An agent using Octokit's GraphQL client (@octokit/graphql) through toolgate.
//
// Run by tests/it/graphql.rs with TOOLGATE_PROXY (http://AGENT:TOKEN@HOST:PORT),
// NODE_EXTRA_CA_CERTS (toolgate's CA) and SDK_RUN. The client reads no HTTPS_PROXY: it takes a
// `fetch` (common.mjs). Each step prints one JSON line:
// {"sdk", "step", "ok", "detail"}.
import { graphql } from "@octokit/graphql";
import { proxyFetch, step } from "./common.mjs";

const PROXY = process.env.TOOLGATE_PROXY;
const RUN = process.env.SDK_RUN || "run";
// The agent holds no real key; toolgate strips this one and injects the real credential.
const DUMMY_KEY = "agent-holds-no-real-key";

const gql = graphql.defaults({
  headers: { authorization: `token ${DUMMY_KEY}` },
  request: { fetch: proxyFetch(PROXY) },
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
