#!/usr/bin/env bash
# Benchmark: toolgate vs a direct connection to a local TLS upstream, with oha.
# Not a test. Prints requests/s, p50 and p99 per scenario and the ratio to direct.
# Policies: bench/policies (a read, and a side-effect-free POST validated against a schema,
# both with a credential injected).
# Usage: bench/run.sh [seconds per run, default 5] [only the scenarios whose name contains this]
# On a machine with two cores or more, toolgate is pinned to core 0 and the load and the upstream
# to core 1 (taskset), so that the numbers do not depend on the scheduler.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-5}s"
ONLY="${2:-}"

command -v oha >/dev/null || cargo install oha --locked
cargo build --release --quiet --bin toolgate --example echo_upstream

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

PIN_GATE=(); PIN_LOAD=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  PIN_GATE=(taskset -c 0); PIN_LOAD=(taskset -c 1)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); PX=$(free_port); AD=$(free_port)

"${PIN_LOAD[@]}" target/release/examples/echo_upstream --listen "127.0.0.1:$UP" --ca-out "$work/up-ca.pem" api.stripe.com \
  2>"$work/upstream.log" & pids+=($!)
RUST_LOG=warn "${PIN_GATE[@]}" target/release/toolgate serve --listen "127.0.0.1:$PX" --admin-listen "127.0.0.1:$AD" \
  --policies bench/policies --certs "$work/certs" --data-dir "$work/data" \
  --connect-to "api.stripe.com:443=127.0.0.1:$UP" --upstream-ca "$work/up-ca.pem" \
  2>"$work/toolgate.log" & pids+=($!)

for _ in $(seq 1 100); do
  [ -f "$work/certs/ca.pem" ] && [ -f "$work/up-ca.pem" ] && curl -sf "http://127.0.0.1:$AD/healthz" >/dev/null && break
  sleep 0.1
done

python3 -c 'import sys; sys.stdout.write("limit=10&query=" + "a" * (1024 - 15))' > "$work/body"
AUTH="Proxy-Authorization: Basic $(printf %s 'bench:bench-token' | base64)"
URL_GET=https://api.stripe.com/v1/customers/cus_123
URL_POST=https://api.stripe.com/v1/customers/search

direct() { "${PIN_LOAD[@]}" oha --no-tui --output-format json -z "$DURATION" --cacert "$work/up-ca.pem" \
  --connect-to "api.stripe.com:443:127.0.0.1:$UP" "$@"; }
proxied() { "${PIN_LOAD[@]}" oha --no-tui --output-format json -z "$DURATION" --cacert "$work/certs/ca.pem" \
  -x "http://127.0.0.1:$PX" --proxy-header "$AUTH" --no-pre-lookup "$@"; }

report() { # name, direct json, proxied json
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
name, d, p = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
def pick(j):
    s = j["summary"]; lat = j["latencyPercentiles"]
    codes = j.get("statusCodeDistribution", {})
    return s["requestsPerSec"], lat["p50"] * 1000, lat["p99"] * 1000, codes
dr, d50, d99, dc = pick(d); pr, p50, p99, pc = pick(p)
print(f"{name:<28} direct {dr:9.0f} req/s p50 {d50:6.2f} ms p99 {d99:6.2f} ms | "
      f"toolgate {pr:9.0f} req/s p50 {p50:6.2f} ms p99 {p99:6.2f} ms | "
      f"ratio rps {pr/dr:4.2f} p50 {p50/d50:4.2f}x p99 {p99/d99:4.2f}x")
bad = {k: v for k, v in pc.items() if k != "200"}
if bad: print(f"  (toolgate non-200 answers: {bad})")
PY
}

run() { # name, oha args...
  local name=$1; shift
  if [ -n "$ONLY" ] && [[ "$name" != *"$ONLY"* ]]; then return; fi
  report "$name" "$(direct "$@")" "$(proxied "$@")"
}

echo "oha $(oha --version | awk '{print $2}'), $DURATION per run, $(nproc) cores${PIN_GATE:+, toolgate on core 0, load and upstream on core 1}"
run "GET keep-alive c=1"  -c 1  "$URL_GET"
run "GET keep-alive c=16" -c 16 "$URL_GET"
run "POST 1 KiB c=16"     -c 16 -m POST -T application/x-www-form-urlencoded -D "$work/body" "$URL_POST"
run "GET new conn c=4"    -c 4  --disable-keepalive "$URL_GET"
