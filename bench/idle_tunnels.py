#!/usr/bin/env python3
"""Holds N idle keep-alive tunnels through toolgate for bench/run.sh ("idle tunnels c=16").

Each tunnel: CONNECT api.stripe.com:443 with the agent's Proxy-Authorization, TLS through it
(trusting toolgate's CA), one GET answered in full on the kept-alive connection, then nothing.
When all are open, writes how many to READY_FILE and holds them until killed.

Usage: idle_tunnels.py PROXY_PORT N CA_PEM AGENT:TOKEN READY_FILE
"""
import asyncio
import base64
import signal
import ssl
import sys

HOST = "api.stripe.com"
PATH = "/v1/customers/cus_123"
# Tunnels opened at once (the rest wait their turn): below toolgate's cap of connections one
# address may have open before they authenticate (64).
OPENING = 32


async def read_answer(r):
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
    if "content-length" in headers:
        await r.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        await r.readuntil(b"0\r\n\r\n")
    return lines[0]


async def open_tunnel(port, ctx, auth, gate):
    async with gate:
        step = "connect"
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            step = "CONNECT"
            w.write(
                f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n"
                f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
            )
            await w.drain()
            status = (await r.readuntil(b"\r\n\r\n")).split(b"\r\n")[0]
            if b" 200" not in status:
                raise RuntimeError(f"answered {status!r}")
            step = "TLS"
            await w.start_tls(ctx, server_hostname=HOST)
            step = "GET"
            w.write(f"GET {PATH} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            await w.drain()
            status = await read_answer(r)
            if " 200" not in status:
                raise RuntimeError(f"answered {status!r}")
            return r, w
        except Exception as e:
            raise RuntimeError(f"{step}: {e!r}") from e


async def main():
    port, n, ca, cred, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    ctx = ssl.create_default_context(cafile=ca)
    auth = base64.b64encode(cred.encode()).decode()
    gate = asyncio.Semaphore(OPENING)
    results = await asyncio.gather(*(open_tunnel(port, ctx, auth, gate) for _ in range(n)), return_exceptions=True)
    held = [t for t in results if not isinstance(t, BaseException)]
    failed = [t for t in results if isinstance(t, BaseException)]
    if failed:
        print(f"{len(failed)} tunnels failed, e.g. {failed[0]!r}", file=sys.stderr)
    with open(ready, "w") as f:
        f.write(f"{len(held)}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
