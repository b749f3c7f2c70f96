// A real OpenID Provider for the page's SSO tests: the certified oidc-provider package, served
// over HTTPS with the test PKI's certificate for idp.acme.test on a free loopback port, with
// devInteractions (a plain login form: any password signs the named account in).
//
// Environment: CERT and KEY (PEM files), CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, GROUPS (a
// JSON object: account id -> its groups) and PORT (default: any free port). Prints one JSON
// line {"port": N} once listening; the issuer is https://idp.acme.test:N.
import { readFileSync } from "node:fs";
import https from "node:https";
import Provider from "oidc-provider";

const groups = JSON.parse(process.env.GROUPS || "{}");
const server = https.createServer({
  cert: readFileSync(process.env.CERT),
  key: readFileSync(process.env.KEY),
});
server.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  const port = server.address().port;
  const provider = new Provider(`https://idp.acme.test:${port}`, {
    clients: [
      {
        client_id: process.env.CLIENT_ID,
        client_secret: process.env.CLIENT_SECRET,
        redirect_uris: [process.env.REDIRECT_URI],
        grant_types: ["authorization_code"],
        response_types: ["code"],
        token_endpoint_auth_method: "client_secret_basic",
      },
    ],
    async findAccount(_ctx, id) {
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: id, email_verified: true, name: id, groups: groups[id] || [] };
        },
      };
    },
    claims: {
      openid: ["sub"],
      email: ["email", "email_verified"],
      profile: ["name", "groups"],
    },
    // The scopes' claims in the ID token itself (toolgate reads the person from it).
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    cookies: { keys: ["toolgate-test-cookie-key"] },
  });
  server.on("request", provider.callback());
  process.stdout.write(JSON.stringify({ port }) + "\n");
});
