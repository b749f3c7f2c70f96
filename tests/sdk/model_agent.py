"""An agent whose model clients are the official OpenAI and Anthropic Python SDKs, then whose
tool call is made with stripe-python, all through toolgate (tests/it/model_reason.rs).

Environment: TOOLGATE_PROXY (http://AGENT:TOKEN@HOST:PORT), TOOLGATE_CA (toolgate's CA).
Each step prints one JSON line: {"sdk", "step", "ok", "detail"}.
"""
import json
import os

import httpx

PROXY = os.environ["TOOLGATE_PROXY"]
CA = os.environ["TOOLGATE_CA"]
DUMMY_KEY = "agent-holds-no-real-key"
TOOLS_OPENAI = [{"type": "function", "function": {"name": "refund_payment", "parameters": {
    "type": "object", "properties": {"payment_intent": {"type": "string"}, "amount": {"type": "integer"}}}}}]
TOOLS_ANTHROPIC = [{"name": "refund_payment", "input_schema": {
    "type": "object", "properties": {"payment_intent": {"type": "string"}, "amount": {"type": "integer"}}}}]


def report(sdk, step, ok, detail):
    print(json.dumps({"sdk": sdk, "step": step, "ok": ok, "detail": detail}), flush=True)


def step(sdk, name, fn):
    try:
        report(sdk, name, True, fn())
    except Exception as e:
        report(sdk, name, False, f"{type(e).__name__}: {e}")


def http():
    return httpx.Client(proxy=PROXY, verify=CA)


def openai_steps():
    from openai import OpenAI

    client = OpenAI(api_key=DUMMY_KEY, http_client=http(), max_retries=0)

    def whole():
        r = client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "pi_openai"}], tools=TOOLS_OPENAI)
        call = r.choices[0].message.tool_calls[0]
        return {"name": call.function.name, "arguments": json.loads(call.function.arguments)}

    def streamed():
        args, name = "", ""
        for chunk in client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "pi_stream"}],
                tools=TOOLS_OPENAI, stream=True):
            for tc in chunk.choices[0].delta.tool_calls or []:
                name += tc.function.name or ""
                args += tc.function.arguments or ""
        return {"name": name, "arguments": json.loads(args)}

    step("openai", "tool_call", whole)
    step("openai", "streamed_tool_call", streamed)


def anthropic_steps():
    from anthropic import Anthropic

    # This SDK is built on httpx2 (and refuses httpx objects): its client takes the proxy and CA.
    import httpx2

    client = Anthropic(
        api_key=DUMMY_KEY, http_client=httpx2.Client(proxy=PROXY, verify=CA), max_retries=0)

    def streamed():
        with client.messages.stream(
                model="claude-test", max_tokens=100, tools=TOOLS_ANTHROPIC,
                messages=[{"role": "user", "content": "pi_claude"}]) as s:
            message = s.get_final_message()
        block = next(b for b in message.content if b.type == "tool_use")
        return {"name": block.name, "arguments": block.input, "answer": message.id}

    step("anthropic", "streamed_tool_call", streamed)


def stripe_steps():
    import stripe

    stripe.ca_bundle_path = CA
    client = stripe.StripeClient(DUMMY_KEY, proxy=PROXY, max_network_retries=0)
    step("stripe-python", "refund", lambda: client.v1.refunds.create(
        {"payment_intent": "pi_claude", "amount": 500}, {"idempotency_key": "model-refund-1"}).id)


openai_steps()
anthropic_steps()
stripe_steps()
