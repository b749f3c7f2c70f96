"""An agent using the official Python SDKs (stripe, PyGithub, sendgrid) through toolgate.

Run by tests/sdk.rs with:
  TOOLGATE_PROXY  http://AGENT:TOKEN@HOST:PORT   (also exported as HTTPS_PROXY); empty for an
                  agent on a redirected network (tests/transparent.rs), which sets no proxy
  TOOLGATE_CA     toolgate's CA (also SSL_CERT_FILE / REQUESTS_CA_BUNDLE)
  SDK_RUN         a word that makes this run's payloads unique

For each SDK it makes reads, a held write (approved by the test while it waits), a refused write
whose error message must reach this code, and a retried write that must execute once. Each
step prints one JSON line: {"sdk", "step", "ok", "detail"}.
"""
import json
import os
import sys

PROXY = os.environ["TOOLGATE_PROXY"] or None
CA = os.environ["TOOLGATE_CA"]
RUN = os.environ.get("SDK_RUN", "run")
# The agent never holds a real key; SDKs insist on having one, so it gets a dummy that toolgate
# strips before injecting the real credential.
DUMMY_KEY = "agent-holds-no-real-key"


def report(sdk, step, ok, detail):
    print(json.dumps({"sdk": sdk, "step": step, "ok": ok, "detail": detail}), flush=True)


def step(sdk, name, fn):
    try:
        report(sdk, name, True, fn())
    except Exception as e:  # the test reads the message the SDK surfaced
        report(sdk, name, False, f"{type(e).__name__}: {e}")


def stripe_python():
    import stripe

    # stripe-python: the proxy and the CA bundle are its own settings, not the environment's.
    stripe.ca_bundle_path = CA
    client = stripe.StripeClient(DUMMY_KEY, proxy=PROXY, max_network_retries=2)
    sdk = "stripe-python"

    def retried():
        opts = {"idempotency_key": f"py-cust-{RUN}"}
        first = client.v1.customers.create({"email": f"py-{RUN}@acme.com", "name": "Py"}, opts)
        again = client.v1.customers.create({"email": f"py-{RUN}@acme.com", "name": "Py"}, opts)
        assert first.id == again.id, (first.id, again.id)
        return first.id

    customer = {}

    def create():
        customer["id"] = retried()
        return customer["id"]

    step(sdk, "retried_write", create)
    step(sdk, "read", lambda: client.v1.customers.retrieve(customer["id"]).email)
    step(
        sdk,
        "held_write",
        lambda: client.v1.refunds.create(
            {"payment_intent": f"pi_py_{RUN}", "amount": 700},
            {"idempotency_key": f"py-refund-{RUN}"},
        ).status,
    )
    step(
        sdk,
        "refused_write",
        lambda: client.v1.customers.create(
            {"email": f"py2-{RUN}@acme.com", "metadata": {"k": "v"}, "tax_exempt": "sometimes"},
            {"idempotency_key": f"py-bad-{RUN}"},
        ).id,
    )
    # A host no contract names: the refusal comes inside the tunnel, so the SDK shows its text.
    elsewhere = stripe.StripeClient(
        DUMMY_KEY,
        proxy=PROXY,
        max_network_retries=0,
        base_addresses={"api": "https://api.unnamed-example.com"},
    )
    step(sdk, "uncontracted_host", lambda: elsewhere.v1.customers.retrieve("cus_1").id)


def pygithub():
    from github import Auth, Github

    # PyGithub uses requests: HTTPS_PROXY and REQUESTS_CA_BUNDLE from the environment.
    gh = Github(auth=Auth.Token(DUMMY_KEY), retry=None)
    sdk = "pygithub"
    step(sdk, "read", lambda: gh.get_repo("acme/widgets").full_name)
    repo = gh.get_repo("acme/widgets", lazy=True)
    step(sdk, "held_write", lambda: repo.create_issue(title=f"Held issue {RUN}", body="from PyGithub").number)
    # The same call again (an agent retrying): it joins the committed proposal.
    step(sdk, "retried_write", lambda: repo.create_issue(title=f"Held issue {RUN}", body="from PyGithub").number)
    other = gh.get_repo("evilcorp/secrets", lazy=True)
    step(sdk, "refused_write", lambda: other.create_issue(title="exfiltrate").number)


def sendgrid_python():
    from sendgrid import SendGridAPIClient

    # sendgrid uses urllib: HTTPS_PROXY and SSL_CERT_FILE from the environment.
    sg = SendGridAPIClient(api_key=DUMMY_KEY)
    sdk = "sendgrid-python"
    mail = {
        "personalizations": [{"to": [{"email": f"jo-{RUN}@acme.com"}]}],
        "from": {"email": "support@acme.com"},
        "subject": f"Your ticket {RUN}",
        "content": [{"type": "text/plain", "value": "We are on it."}],
    }
    step(sdk, "read", lambda: sg.client.templates.get(query_params={"generations": "dynamic"}).status_code)
    step(sdk, "held_write", lambda: sg.client.mail.send.post(request_body=mail).status_code)
    step(sdk, "retried_write", lambda: sg.client.mail.send.post(request_body=mail).status_code)
    outside = dict(mail, personalizations=[{"to": [{"email": "someone@gmail.com"}]}])

    def refused():
        try:
            return sg.client.mail.send.post(request_body=outside).status_code
        except Exception as e:  # python_http_client raises HTTPError with the body
            body = getattr(e, "body", b"")
            raise RuntimeError(f"{e}: {body.decode() if isinstance(body, bytes) else body}")

    step(sdk, "refused_write", refused)


if __name__ == "__main__":
    which = sys.argv[1:] or ["stripe", "github", "sendgrid"]
    for name in which:
        {"stripe": stripe_python, "github": pygithub, "sendgrid": sendgrid_python}[name]()
