"""Python clients through toolgate's TLS proxy listener (HTTPS_PROXY=https://…): `requests`
(urllib3 2.x) and `httpx`, each with TLS to toolgate and toolgate's own TLS inside the tunnel.

Run by tests/it/tls_listeners.rs with:
  TOOLGATE_PROXY      https://AGENT:TOKEN@HOST:PORT
  TOOLGATE_CA_BUNDLE  the listener's CA and toolgate's CA in one PEM file
  SDK_RUN             a word that makes this run's payloads unique

Each client makes a read (after an automatic write), a refused write whose message must reach
it, and a held refund an approver releases while it waits. Each step prints one JSON line:
{"client", "step", "status", "body"}.
"""
import json
import os
import ssl

PROXY = os.environ["TOOLGATE_PROXY"]
BUNDLE = os.environ["TOOLGATE_CA_BUNDLE"]
RUN = os.environ.get("SDK_RUN", "run")
API = "https://api.stripe.com"


def report(client, step, status, body):
    print(json.dumps({"client": client, "step": step, "status": status, "body": body}), flush=True)


def steps(client, post, get):
    try:
        status, body = post("/v1/customers", {"email": f"{client}-{RUN}@acme.com"}, f"{client}-cust-{RUN}")
        customer = json.loads(body)["id"]
        report(client, "read", *get(f"/v1/customers/{customer}"))
        bad = {"email": f"{client}2-{RUN}@acme.com", "tax_exempt": "sometimes"}
        report(client, "refused", *post("/v1/customers", bad, f"{client}-bad-{RUN}"))
        refund = {"payment_intent": f"pi_{client}_{RUN}", "amount": "300"}
        report(client, "held", *post("/v1/refunds", refund, f"{client}-refund-{RUN}"))
    except Exception as e:  # the test reads what the client surfaced
        report(client, "error", 0, f"{type(e).__name__}: {e}")


def with_requests():
    import requests

    # urllib3 2.x speaks TLS to an https:// proxy; `verify` is the bundle for both hops. Given
    # per request: REQUESTS_CA_BUNDLE, when set, wins over a Session's `verify`.
    session = requests.Session()
    session.proxies = {"https": PROXY}

    def post(path, data, key):
        r = session.post(API + path, data=data, headers={"Idempotency-Key": key}, timeout=60, verify=BUNDLE)
        return r.status_code, r.text

    def get(path):
        r = session.get(API + path, timeout=60, verify=BUNDLE)
        return r.status_code, r.text

    steps("requests", post, get)


def with_httpx():
    import httpx

    context = ssl.create_default_context(cafile=BUNDLE)
    proxy = httpx.Proxy(PROXY, ssl_context=context)
    with httpx.Client(proxy=proxy, verify=context, timeout=60) as client:

        def post(path, data, key):
            r = client.post(API + path, data=data, headers={"Idempotency-Key": key})
            return r.status_code, r.text

        def get(path):
            r = client.get(API + path)
            return r.status_code, r.text

        steps("httpx", post, get)


with_requests()
with_httpx()
