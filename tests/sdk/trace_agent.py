"""An agent instrumented with the official OpenTelemetry Python SDK, calling through toolgate.

Run by tests/it/traces.rs with:
  TOOLGATE_PROXY   http://AGENT:TOKEN@HOST:PORT
  TOOLGATE_CA      toolgate's CA
  OTLP_TRACES_URL  the test's OTLP/HTTP receiver (…/v1/traces)
  SDK_RUN          a word that makes this run's payloads unique

Each call is made inside a span of the agent's own, whose context goes with the request
(`traceparent`): a customer created, read back (its address and phone are hidden from the
agent), a call no contract allows (refused), and a deletion held until the test approves it.
Each step prints one JSON line: {"step", "status", "trace_id", "span_id", "body"}.
"""
import json
import os

import requests
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": "trace-agent"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=os.environ["OTLP_TRACES_URL"])))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("trace-agent")

RUN = os.environ.get("SDK_RUN", "run")
session = requests.Session()
session.trust_env = False
session.proxies = {"https": os.environ["TOOLGATE_PROXY"]}
session.verify = os.environ["TOOLGATE_CA"]


def call(step, method, url, headers=None, data=None):
    with tracer.start_as_current_span(f"agent {step}") as span:
        headers = dict(headers or {})
        headers["Authorization"] = "Bearer agent-holds-no-real-key"
        propagate.inject(headers)
        r = session.request(method, url, headers=headers, data=data, timeout=60)
        ctx = span.get_span_context()
        print(json.dumps({
            "step": step,
            "status": r.status_code,
            "trace_id": format(ctx.trace_id, "032x"),
            "span_id": format(ctx.span_id, "016x"),
            "body": r.text[:4000],
        }), flush=True)
        return r


created = call("create", "POST", "https://api.stripe.com/v1/customers", headers={"Idempotency-Key": f"trace-cus-{RUN}"}, data={
    "email": f"trace-{RUN}@acme.com",
    "name": "Traced",
    "phone": f"+1-555-0100-{RUN}",
    "address[line1]": f"1 Hidden Street {RUN}",
}).json()
call("read", "GET", f"https://api.stripe.com/v1/customers/{created['id']}")
call("refused", "GET", "https://api.stripe.com/v1/balance")
call("held", "DELETE", f"https://api.stripe.com/v1/customers/{created['id']}",
     headers={"Idempotency-Key": f"trace-del-{RUN}"})
provider.shutdown()
