// A real OAuth authorization server for the per-user connection tests: the certified
// oidc-provider package over HTTPS (the test PKI's certificate for idp.acme.test) issuing
// authorization codes with PKCE, refresh tokens with rotation, access tokens (2 s when the
// scope "short" is granted, else an hour), revocation and introspection; and beside it a fake
// GitHub-like API (the same certificate, for api.github.test) that takes only access tokens
// this server issued, asking the server's introspection endpoint over HTTPS, and logs whose
// token each call carried.
//
// Environment: CERT, KEY, CA (PEM files), CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, PORT and
// API_PORT (0: any), ASSERTION_JWKS and ASSERTION_ISSUER (the assertions token exchange takes).
// Prints one JSON line {"port": N, "api": M} once both listen; the issuer is
// https://idp.acme.test:N. Test controls on the provider's port: GET /_counts (token requests by
// grant type, and refusals), GET /_seen (the API's log), POST /_break?account=ID (ends that
// person's grants: their refresh tokens stop working).
import { readFileSync } from "node:fs";
import https from "node:https";
import Provider, { errors } from "oidc-provider";
import { createLocalJWKSet, jwtVerify } from "jose";

const cert = readFileSync(process.env.CERT);
const key = readFileSync(process.env.KEY);
const ca = readFileSync(process.env.CA);
const API_CLIENT = "github-api";
const API_SECRET = "github-api-introspection-secret";
const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
// The keys and issuer of the company's assertions that the token-exchange grant takes.
const assertionKeys = createLocalJWKSet(JSON.parse(process.env.ASSERTION_JWKS || '{"keys":[]}'));
const assertionIssuer = process.env.ASSERTION_ISSUER || "https://corp.example.com";
const counts = {};
const seen = [];
const grants = {};

const server = https.createServer({ cert, key });
const api = https.createServer({ cert, key });

function introspect(port, token) {
  return new Promise((resolve, reject) => {
    const body = new URLSearchParams({ token }).toString();
    const req = https.request(
      {
        host: "127.0.0.1",
        port,
        servername: "idp.acme.test",
        path: "/token/introspection",
        method: "POST",
        ca,
        headers: {
          host: `idp.acme.test:${port}`,
          "content-type": "application/x-www-form-urlencoded",
          authorization: "Basic " + Buffer.from(`${API_CLIENT}:${API_SECRET}`).toString("base64"),
        },
      },
      (res) => {
        let text = "";
        res.on("data", (c) => (text += c));
        res.on("end", () => {
          try {
            resolve(JSON.parse(text));
          } catch (e) {
            reject(e);
          }
        });
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

// A small MCP server at /mcp (JSON answers): initialize opens a session; tools/call of
// `whoami` answers with the person whose token the call carried.
async function mcp(req, res, user) {
  let text = "";
  for await (const chunk of req) text += chunk;
  const msg = JSON.parse(text || "{}");
  if (msg.id === undefined) {
    res.writeHead(202);
    return res.end();
  }
  const reply = (result) => {
    res.writeHead(200, { "content-type": "application/json", "mcp-session-id": "mcp-session-1" });
    res.end(JSON.stringify({ jsonrpc: "2.0", id: msg.id, result }));
  };
  if (msg.method === "initialize") {
    return reply({ protocolVersion: "2025-06-18", capabilities: { tools: {} }, serverInfo: { name: "gh", version: "1" } });
  }
  if (msg.method === "tools/call") return reply({ content: [{ type: "text", text: user }] });
  return reply({});
}

function json(res, status, value) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(value));
}

server.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  const port = server.address().port;
  const provider = new Provider(`https://idp.acme.test:${port}`, {
    clients: [
      {
        client_id: process.env.CLIENT_ID,
        client_secret: process.env.CLIENT_SECRET,
        redirect_uris: [process.env.REDIRECT_URI],
        grant_types: ["authorization_code", "refresh_token", TOKEN_EXCHANGE],
        response_types: ["code"],
        token_endpoint_auth_method: "client_secret_basic",
      },
      {
        // The same, authenticating with its secret in the form (as GitHub's OAuth apps do).
        client_id: `${process.env.CLIENT_ID}-post`,
        client_secret: process.env.CLIENT_SECRET,
        redirect_uris: [process.env.REDIRECT_URI],
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
        token_endpoint_auth_method: "client_secret_post",
      },
      {
        client_id: API_CLIENT,
        client_secret: API_SECRET,
        redirect_uris: [],
        grant_types: [],
        response_types: [],
        token_endpoint_auth_method: "client_secret_basic",
      },
    ],
    async findAccount(_ctx, id) {
      return { accountId: id, async claims() { return { sub: id, email: id }; } };
    },
    claims: { openid: ["sub"], email: ["email"] },
    scopes: ["openid", "offline_access", "repo", "short"],
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
    },
    issueRefreshToken: async () => true,
    rotateRefreshToken: () => true,
    ttl: {
      AccessToken: (_ctx, token) => ((token.scope || "").split(" ").includes("short") ? 2 : 3600),
      RefreshToken: () => 86400,
      Grant: () => 86400,
      Session: () => 3600,
      Interaction: () => 600,
      AuthorizationCode: () => 60,
      IdToken: () => 3600,
    },
    cookies: { keys: ["toolgate-test-cookie-key"] },
  });
  const count = (what) => (counts[what] = (counts[what] || 0) + 1);
  provider.on("grant.success", (ctx) => count(ctx.oidc.params.grant_type));
  provider.on("grant.error", (ctx) => count(`error:${ctx.oidc.params?.grant_type}`));
  provider.on("refresh_token.saved", (t) => {
    (grants[t.accountId] ||= new Set()).add(t.grantId);
  });
  provider.on("grant.revoked", () => count("revoked"));
  provider.on("server_error", (_ctx, err) => console.error("server_error", err));
  // RFC 8693: a verified assertion of the company's identity provider, exchanged for an
  // access token of this server for the person it names (audience github-api only).
  provider.registerGrantType(
    TOKEN_EXCHANGE,
    async (ctx) => {
      const { params, client } = ctx.oidc;
      count("exchange");
      let claims;
      try {
        ({ payload: claims } = await jwtVerify(params.subject_token, assertionKeys, {
          issuer: assertionIssuer,
          audience: "toolgate",
        }));
      } catch (e) {
        throw new errors.InvalidGrant(`the subject_token is not valid: ${e.message}`);
      }
      if (params.audience !== "github-api") {
        throw new errors.InvalidTarget("tokens are exchanged for audience github-api only");
      }
      if (String(claims.email).startsWith("mallory")) {
        throw new errors.CustomOIDCProviderError("invalid_grant", `${claims.email} may not act through this client`);
      }
      const accountId = claims.email;
      const grant = new provider.Grant({ accountId, clientId: client.clientId });
      grant.addOIDCScope(`openid ${params.scope || ""}`.trim());
      const grantId = await grant.save();
      const at = new provider.AccessToken({ accountId, client, grantId, scope: params.scope, gty: "token_exchange" });
      const value = await at.save();
      ctx.body = {
        access_token: value,
        issued_token_type: "urn:ietf:params:oauth:token-type:access_token",
        token_type: "Bearer",
        expires_in: at.exp ? at.exp - Math.floor(Date.now() / 1000) : 3600,
        scope: params.scope,
      };
    },
    ["subject_token", "subject_token_type", "audience", "scope", "requested_token_type"],
  );
  const callback = provider.callback();
  server.on("request", async (req, res) => {
    const url = new URL(req.url, "https://idp.acme.test");
    if (url.pathname === "/_counts") return json(res, 200, counts);
    if (url.pathname === "/_seen") return json(res, 200, seen);
    if (url.pathname === "/_break" && req.method === "POST") {
      const account = url.searchParams.get("account");
      let ended = 0;
      for (const id of grants[account] || []) {
        const grant = await provider.Grant.find(id);
        if (grant) {
          await grant.destroy();
          ended += 1;
        }
      }
      return json(res, 200, { ended });
    }
    return callback(req, res);
  });
  // The API: a call's bearer token must be active at the server; the log names its person.
  api.on("request", async (req, res) => {
    const auth = req.headers.authorization || "";
    const token = auth.startsWith("Bearer ") ? auth.slice(7) : "";
    const facts = token ? await introspect(port, token).catch(() => ({ active: false })) : { active: false };
    if (!facts.active) {
      seen.push({ path: req.url, user: null });
      return json(res, 401, { message: "Bad credentials" });
    }
    seen.push({ path: req.url, user: facts.sub, scope: facts.scope, client: facts.client_id, token });
    if (req.url === "/mcp") return mcp(req, res, facts.sub);
    // An API that echoes the credential it was sent (in its body and a header): toolgate must
    // cut the person's token out before the agent, or the stored outcome, sees it.
    if (req.url.startsWith("/echo")) {
      res.writeHead(200, { "content-type": "application/json", "x-echo": auth });
      return res.end(JSON.stringify({ login: facts.sub, authorization: auth, token }));
    }
    return json(res, 200, { login: facts.sub, scope: facts.scope });
  });
  api.listen(Number(process.env.API_PORT || 0), "127.0.0.1", () => {
    process.stdout.write(JSON.stringify({ port, api: api.address().port }) + "\n");
  });
});
