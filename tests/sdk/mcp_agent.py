"""An agent on the official MCP client (`mcp`, streamable HTTP) going through toolgate by
HTTPS_PROXY, for tests/mcp.rs. Prints one JSON line per step: {"step", "ok", "detail"}.

    HTTPS_PROXY=http://agent:token@toolgate SSL_CERT_FILE=toolgate-ca.pem \
    python mcp_agent.py https://mcp.tickets.example/mcp STEP...

Steps: list, read, unknown_argument, uncontracted, rule, held, retry, denied, denied_tool,
other_method, batch, pinned_read.
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client


def report(step, ok, detail):
    print(json.dumps({"step": step, "ok": ok, "detail": detail}), flush=True)


def text_of(result):
    return " ".join(getattr(c, "text", "") for c in result.content)


async def call(session, step, name, arguments):
    result = await session.call_tool(name, arguments)
    report(step, not result.is_error, text_of(result))


async def batch(url):
    """A raw JSON-RPC batch (the SDK sends none): an allowed read and a refused call, in a
    session of its own."""
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    async with httpx2.AsyncClient(timeout=30, proxy=os.environ["HTTPS_PROXY"]) as http:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "batch", "version": "1"}}}
        r = await http.post(url, json=init, headers=headers)
        session = r.headers.get("mcp-session-id")
        if session:
            headers["mcp-session-id"] = session
        headers["mcp-protocol-version"] = "2025-06-18"
        await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        r = await http.post(url, json=[
            {"jsonrpc": "2.0", "id": "a", "method": "tools/call",
             "params": {"name": "get_ticket", "arguments": {"id": "T-7"}}},
            {"jsonrpc": "2.0", "id": "b", "method": "tools/call",
             "params": {"name": "search_tickets", "arguments": {"query": "x"}}},
        ], headers=headers)
        report("batch", r.status_code == 200, r.json())


async def main(url, steps):
    await session_steps(url, [s for s in steps if s != "batch"])
    if "batch" in steps:
        try:
            await batch(url)
        except Exception as e:
            report("batch", False, f"{type(e).__name__}: {e}")


async def session_steps(url, steps):
    if not steps:
        return
    async with streamable_http_client(url) as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            for step in steps:
                try:
                    if step == "list":
                        tools = await session.list_tools()
                        report(step, True, sorted(t.name for t in tools.tools))
                    elif step in ("read", "pinned_read"):
                        await call(session, step, "get_ticket", {"id": "T-9"})
                    elif step == "unknown_argument":
                        await call(session, step, "get_ticket", {"id": "T-9", "verbose": True})
                    elif step == "uncontracted":
                        await call(session, step, "search_tickets", {"query": "printer"})
                    elif step == "rule":
                        await call(session, step, "create_ticket", {"title": "my password is hunter2"})
                    elif step in ("held", "retry"):
                        await call(session, step, "create_ticket", {"title": "printer on fire", "priority": "high"})
                    elif step == "denied":
                        await call(session, step, "create_ticket", {"title": "deny me"})
                    elif step == "denied_tool":
                        await call(session, step, "delete_all_tickets", {})
                    elif step == "other_method":
                        await session.list_resources()
                        report(step, True, "listed")
                except Exception as e:  # a step that fails says why, the others still run
                    report(step, False, f"{type(e).__name__}: {e}")


asyncio.run(main(sys.argv[1], sys.argv[2:]))
