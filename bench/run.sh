#!/usr/bin/env bash
# Benchmark: toolgate vs a direct connection to a local TLS upstream, with oha, and vs a bare
# MITM proxy (hudsucker, bench/mitm-ref: interception and nothing else) in the same run.
# Not a test. Each scenario runs RUNS times (default 3), alternating direct, toolgate and the
# reference; it prints the medians of requests/s and p50, and their ratios to direct.
# Policies: bench/policies (a read, and a side-effect-free POST validated against a schema,
# both with a credential injected; and a write, committed: its rate is the commit rate). The
# read also runs with an issued token and through a grant, and with 1,000 more contracts on its
# host ("1000 contracts": the policies plus a generated file, on a second toolgate).
#
# Then "sigterm": LOAD_SECONDS (default 60) of reads at c=16 on a fresh data dir, SIGTERM while
# the load runs, and the upstream's count of requests received against the audit log's count
# of recorded requests, toolgate's peak RSS, `audit story` on the full log (time and peak
# memory), and bytes on disk per audited request.
#
# As root with nft, "transparent": the same GETs from a network namespace whose port 443 the
# kernel redirects to toolgate's --transparent-listen, next to the CONNECT path.
#
# "idle tunnels c=16": TUNNELS (default 5,000) keep-alive CONNECT tunnels, each through TLS with
# one read answered, then held open and idle by a small asyncio client (bench/idle_tunnels.py), on
# a toolgate of their own; the same GET c=16 load without and with them, and toolgate's RSS per
# idle tunnel ((RSS with the tunnels - RSS without) / TUNNELS).
#
# Usage: bench/run.sh [--profile] [seconds per run, default 5] [only the scenarios whose name
# contains this]
#   RUNS=3 LOAD_SECONDS=60 NO_REF=1 (skip the hudsucker reference) TUNNELS=5000
#   --profile: records `perf record -g` (PERF_CALLGRAPH="--call-graph dwarf", PERF_FREQ=999) of
#   toolgate during its first run of each scenario run
#   (installs linux-perf with apt when perf is missing) into PROFILE_DIR (default
#   the target dir's bench-profile/), and prints each profile's path.
# On a machine with two cores or more, toolgate (and the reference) run on core 0 and the load
# and the upstream on core 1 (taskset), so that the numbers do not depend on the scheduler.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=""
ARGS=()
for a in "$@"; do
  case "$a" in
    --profile) PROFILE=1 ;;
    *) ARGS+=("$a") ;;
  esac
done
set -- "${ARGS[@]+"${ARGS[@]}"}"
DURATION="${1:-5}s"
ONLY="${2:-}"
RUNS="${RUNS:-3}"
LOAD_SECONDS="${LOAD_SECONDS:-60}"

command -v oha >/dev/null || cargo install oha --locked
# Where cargo puts what it builds (target/, or CARGO_TARGET_DIR, or a config's target-dir).
target_of() { cargo metadata --format-version 1 --no-deps "$@" | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'; }
TARGET=$(target_of)
PROFILE_DIR="${PROFILE_DIR:-$TARGET/bench-profile}"
if [ -n "$PROFILE" ]; then
  command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
  mkdir -p "$PROFILE_DIR"
fi
# The idle-tunnel scenario holds thousands of sockets on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TUNNELS="${TUNNELS:-5000}"
cargo build --release --quiet --bin toolgate --example echo_upstream
REF=""
if [ -z "${NO_REF:-}" ]; then
  cargo build --release --quiet --manifest-path bench/mitm-ref/Cargo.toml
  REF="$(target_of --manifest-path bench/mitm-ref/Cargo.toml)/release/mitm-ref"
fi

work=$(mktemp -d)
pids=()
TP_NS=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$TP_NS" ]; then
    nft delete table ip "toolgate_bench_$$" 2>/dev/null || true
    ip netns del "$TP_NS" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

PIN_GATE=(); PIN_LOAD=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  PIN_GATE=(taskset -c 0); PIN_LOAD=(taskset -c 1)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); PX=$(free_port); AD=$(free_port); RF=$(free_port)

"${PIN_LOAD[@]}" "$TARGET/release/examples/echo_upstream" --listen "127.0.0.1:$UP" --ca-out "$work/up-ca.pem" api.stripe.com \
  2>"$work/upstream.log" & UPSTREAM=$!; pids+=($UPSTREAM)
for _ in $(seq 1 100); do [ -f "$work/up-ca.pem" ] && break; sleep 0.1; done

# The transparent path: as root with nft, the load also runs from a network namespace of its
# own (veth 10.239.1.2 -> 10.239.1.1) whose port 443 the kernel redirects to toolgate's
# --transparent-listen; agent "bench-transparent" is known by that source address.
TRANSPARENT=()
if [ "$(id -u)" = 0 ] && command -v nft >/dev/null && command -v ip >/dev/null; then
  TP_NS="tgbench$$"; TP_H="tgbh$$"; TP_A="tgba$$"; TPP=$(free_port)
  if ip netns add "$TP_NS" && ip link add "$TP_H" type veth peer name "$TP_A" \
    && ip link set "$TP_A" netns "$TP_NS" && ip addr add 10.239.1.1/30 dev "$TP_H" && ip link set "$TP_H" up \
    && ip -n "$TP_NS" addr add 10.239.1.2/30 dev "$TP_A" && ip -n "$TP_NS" link set "$TP_A" up \
    && ip -n "$TP_NS" link set lo up \
    && printf 'table ip toolgate_bench_%s {\n chain pre {\n  type nat hook prerouting priority -100;\n  iifname "%s" tcp dport 443 dnat to 10.239.1.1:%s\n }\n}\n' "$$" "$TP_H" "$TPP" | nft -f -; then
    TRANSPARENT=(--transparent-listen "10.239.1.1:$TPP")
  else
    echo "note: no network namespace for the transparent scenario; skipping it"
    ip netns del "$TP_NS" 2>/dev/null || true; TP_NS=""
  fi
fi

# DATABASE_URL=postgres://… runs toolgate on that PostgreSQL database instead of sled (use a
# scratch database: the runs' audit events stay in it). Only the load scenarios mean anything
# then ("sigterm" reads the sled data dir).
DB=()
if [ -n "${DATABASE_URL:-}" ]; then DB=(--database-url "$DATABASE_URL"); fi
EXTRA=()

start_toolgate() { # data dir, proxy port, admin port; sets GATE
  RUST_LOG=warn "${PIN_GATE[@]}" "$TARGET/release/toolgate" serve "${DB[@]}" "${EXTRA[@]}" --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$3" "${TRANSPARENT[@]}" \
    --policies "${POLICIES:-bench/policies}" --certs "$work/certs" --data-dir "$1" \
    --connect-to "api.stripe.com:443=127.0.0.1:$UP" --upstream-ca "$work/up-ca.pem" \
    2>>"$work/toolgate.log" & GATE=$!; pids+=($GATE)
  for _ in $(seq 1 100); do
    [ -f "$work/certs/ca.pem" ] && curl -sf "http://127.0.0.1:$3/healthz" >/dev/null && return
    sleep 0.1
  done
  echo "toolgate did not start"; cat "$work/toolgate.log"; exit 1
}
start_toolgate "$work/data" "$PX" "$AD"
if [ -n "$REF" ]; then
  "${PIN_GATE[@]}" "$REF" "127.0.0.1:$RF" "$work/ref-ca.pem" "127.0.0.1:$UP" "$work/up-ca.pem" 2>"$work/ref.log" & REF_PID=$!; pids+=($REF_PID)
  for _ in $(seq 1 100); do [ -f "$work/ref-ca.pem" ] && break; sleep 0.1; done
fi

python3 -c 'import sys; sys.stdout.write("limit=10&query=" + "a" * (1024 - 15))' > "$work/body"
AUTH="Proxy-Authorization: Basic $(printf %s 'bench:bench-token' | base64)"
URL_GET=https://api.stripe.com/v1/customers/cus_123
URL_POST=https://api.stripe.com/v1/customers/search

direct() { "${PIN_LOAD[@]}" oha --no-tui --output-format json -z "$DURATION" --cacert "$work/up-ca.pem" \
  --connect-to "api.stripe.com:443:127.0.0.1:$UP" "$@"; }
proxied() { "${PIN_LOAD[@]}" oha --no-tui --output-format json -z "$DURATION" --cacert "$work/certs/ca.pem" \
  -x "http://127.0.0.1:$PX" --proxy-header "$AUTH" --no-pre-lookup "$@"; }
transparent() { ip netns exec "$TP_NS" "${PIN_LOAD[@]}" oha --no-tui --output-format json -z "$DURATION" \
  --cacert "$work/certs/ca.pem" --connect-to "api.stripe.com:443:10.239.1.1:443" "$@"; }
reference() { "${PIN_LOAD[@]}" oha --no-tui --output-format json -z "$DURATION" --cacert "$work/ref-ca.pem" \
  -x "http://127.0.0.1:$RF" --no-pre-lookup "$@"; }

report() { # name, then a directory of d.N / t.N / r.N oha JSON files
  python3 - "$1" "$2" <<'PY'
import json, os, sys, glob, statistics as st
name, d = sys.argv[1], sys.argv[2]
label = os.environ.get("THIRD", "mitm-ref")
def med(prefix):
    runs = []
    for f in sorted(glob.glob(f"{d}/{prefix}.*")):
        j = json.load(open(f))
        codes = j.get("statusCodeDistribution", {})
        lat = j["latencyPercentiles"]
        runs.append((j["summary"]["requestsPerSec"], lat["p50"] * 1000,
                     {k: v for k, v in codes.items() if k != "200"}, (lat.get("p99") or 0) * 1000))
    if not runs:
        return None
    return (st.median(r[0] for r in runs), st.median(r[1] for r in runs), [r[2] for r in runs if r[2]],
            st.median(r[3] for r in runs))
dr, d50, _, d99 = med("d"); tr, t50, tbad, t99 = med("t"); ref = med("r")
line = (f"{name:<22} direct {dr:8.0f}/s p50 {d50:5.2f} ms | toolgate {tr:7.0f}/s p50 {t50:5.2f} ms "
        f"ratio {tr/dr:4.2f} (+{t50-d50:4.2f} ms)")
if ref:
    rr, r50, _, r99 = ref
    line += f" | {label} {rr:7.0f}/s p50 {r50:5.2f} ms ratio {rr/dr:4.2f}; toolgate/{label} {tr/rr:4.2f}"
print(line)
# The tail: p99 of each (medians of the runs), and toolgate's against the third column's.
tail = f"{'':<22} p99: direct {d99:6.2f} ms | toolgate {t99:6.2f} ms"
if ref:
    tail += f" | {label} {r99:6.2f} ms; toolgate/{label} {t99 / r99 if r99 else 0:4.2f}x"
print(tail)
# CPU per request (user + system of the process, all its threads, over the run): robust to a
# busy machine where requests/s are not.
hz = os.sysconf("SC_CLK_TCK")
def cpu_per_req(prefix, cpu):
    vals = []
    for f in sorted(glob.glob(f"{d}/{cpu}.*")):
        run = f.rsplit(".", 1)[1]
        ticks = [int(x) for x in open(f).read().split()]
        j = json.load(open(f"{d}/{prefix}.{run}"))
        n = j["summary"]["requestsPerSec"] * j["summary"]["total"]
        if len(ticks) == 2 and n:
            vals.append((ticks[1] - ticks[0]) / hz / n * 1e6)
    return st.median(vals) if vals else None
tc, rc = cpu_per_req("t", "tc"), cpu_per_req("r", "rc")
if tc:
    cpu = f"{'':<22} cpu per request: toolgate {tc:6.1f} us"
    if rc:
        cpu += f" | {label} {rc:6.1f} us; toolgate/{label} {tc / rc:4.2f}x"
    print(cpu)
if os.environ.get("SHOW_RUNS"):
    rates = [json.load(open(f))["summary"]["requestsPerSec"] for f in sorted(glob.glob(f"{d}/t.*"), key=lambda f: int(f.rsplit(".", 1)[1]))]
    print(f"{'':<22} toolgate runs, in order: " + ", ".join(f"{r:.0f}/s" for r in rates))
if tbad: print(f"  (toolgate non-200 answers: {tbad})")
PY
}

# --profile: perf records toolgate ($GATE) from start_perf to stop_perf.
PERF=""; PERF_OUT=""
start_perf() { # scenario name
  [ -n "$PROFILE" ] || return 0
  PERF_OUT="$PROFILE_DIR/perf.$(printf %s "$1" | tr -c 'A-Za-z0-9=.-' '_').data"
  perf record ${PERF_CALLGRAPH:--g} -F ${PERF_FREQ:-999} -p "$GATE" -o "$PERF_OUT" 2>>"$work/perf.log" & PERF=$!
  # perf attaches asynchronously: wait until it has written its header.
  for _ in $(seq 1 50); do [ -s "$PERF_OUT" ] && break; sleep 0.1; done
}
stop_perf() {
  [ -n "$PERF" ] || return 0
  kill -INT "$PERF" 2>/dev/null || true; wait "$PERF" 2>/dev/null || true; PERF=""
}
say_profile() {
  if [ -n "$PERF_OUT" ]; then echo "  profile: $PERF_OUT (perf report -i $PERF_OUT)"; PERF_OUT=""; fi
}

# A process's CPU time so far (user + system, all threads), in clock ticks.
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

run() { # name, oha args...
  local name=$1; shift
  if [ -n "$ONLY" ] && [[ "$name" != *"$ONLY"* ]]; then return; fi
  local d; d=$(mktemp -d -p "$work")
  for i in $(seq 1 "$RUNS"); do
    direct "$@" > "$d/d.$i"
    if [ "$i" = 1 ]; then start_perf "$name"; fi
    cpu_of "$GATE" > "$d/tc.$i"; proxied "$@" > "$d/t.$i"; cpu_of "$GATE" >> "$d/tc.$i"
    stop_perf
    if [ -n "$REF" ]; then
      cpu_of "$REF_PID" > "$d/rc.$i"; reference "$@" > "$d/r.$i"; cpu_of "$REF_PID" >> "$d/rc.$i"
    fi
  done
  report "$name" "$d"
  say_profile
}

echo "oha $(oha --version | awk '{print $2}'), $DURATION per run, medians of $RUNS, $(nproc) cores${PIN_GATE:+, toolgate on core 0, load and upstream on core 1}"
run "GET keep-alive c=1"  -c 1  "$URL_GET"
run "GET keep-alive c=16" -c 16 "$URL_GET"
run "POST 1 KiB c=16"     -c 16 -m POST -T application/x-www-form-urlencoded -D "$work/body" "$URL_POST"
run "GET new conn c=4"    -c 4  --disable-keepalive "$URL_GET"
# GraphQL: a query of two root fields with variables, each field matched to its contract and its
# arguments checked (the same body to the upstream directly and through the reference).
GQL='{"query":"query Repo($owner: String!, $name: String!) { viewer { login } repository(owner: $owner, name: $name) { id name issues(first: 5) { nodes { number title author { login } } } } }","variables":{"owner":"acme","name":"widgets"},"operationName":"Repo"}'
run "GraphQL query c=16"  -c 16 -m POST -T application/json -d "$GQL" https://api.stripe.com/graphql
# A model provider's streamed answer (SSE: text deltas, a tool call in fragments, the usage),
# read as it passes for the model, its usage and the tool call it asks for.
run "model stream c=16"   -c 16 -m POST -T application/json -d '{"model":"gpt-bench","stream":true,"messages":[]}' https://api.stripe.com/v1/chat/completions
# Principals: the same reads with a short-lived token an admin issued (checked against the
# store on every request), and by an agent whose tools do not name the read, lent it by a grant
# (looked up in the store on every request).
admin_api() { curl -sf -H "Authorization: Bearer bench-admin-token" -H 'content-type: application/json' \
  -d "$2" "http://127.0.0.1:$AD$1"; }
ISSUED=$(admin_api /api/agents/bench/tokens '{"ttl": "1h"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
admin_api /api/grants '{"agent": "bench-lent", "tool": "bench.customers.retrieve", "for": "1h", "reason": "bench"}' >/dev/null
AUTH="Proxy-Authorization: Basic $(printf %s "bench:$ISSUED" | base64 -w0)" run "GET issued token c=16" -c 16 "$URL_GET"
AUTH="Proxy-Authorization: Basic $(printf %s 'bench-lent:bench-token' | base64 -w0)" run "GET lent by a grant c=16" -c 16 "$URL_GET"
# Writes: every call a new invoice id, so every one is committed (idempotency record, durable
# commit event, then sent); the audit writer's group commit is what lets them scale with c.
URL_WRITE='https://api.stripe.com/v1/invoices/in_[a-z0-9]{24}'
run "write commit c=1"      -c 1  -m POST -T application/x-www-form-urlencoded -d "description=bench" --rand-regex-url "$URL_WRITE"
run "write commit c=16"     -c 16 -m POST -T application/x-www-form-urlencoded -d "description=bench" --rand-regex-url "$URL_WRITE"

# The transparent path next to the CONNECT path ("toolgate" is CONNECT, the third column the
# same toolgate reached through the kernel redirect from the namespace).
if [ -n "$TP_NS" ] && { [ -z "$ONLY" ] || [[ "transparent" == *"$ONLY"* ]]; }; then
  for c in 1 16; do
    d=$(mktemp -d -p "$work")
    for i in $(seq 1 "$RUNS"); do
      direct -c "$c" "$URL_GET" > "$d/d.$i"
      proxied -c "$c" "$URL_GET" > "$d/t.$i"
      transparent -c "$c" "$URL_GET" > "$d/r.$i"
    done
    THIRD=transparent report "transparent GET c=$c" "$d"
  done
fi

# Whole-API matching: the same reads with 1,000 more contracts on the same host and method (as
# an imported API has), next to the one-contract rows above. A router per host and method: the
# cost of a match follows the path, not the number of contracts.
if [ -z "$ONLY" ] || [[ "1000 contracts" == *"$ONLY"* ]]; then
  many="$work/policies-1000"
  cp -r bench/policies "$many"
  python3 - "$many/many.toml" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(1000):
        f.write(f'[[tool]]\nname = "bench.many.t{i}"\nhost = "api.stripe.com"\nmethod = "GET"\n'
                f'path = "/v1/many{i}/{{id}}/items/{{item}}"\ncredential = {{ staging = "bench-key" }}\n\n')
PY
  ONE_GATE=$GATE; ONE_PX=$PX; SAVED_TP=("${TRANSPARENT[@]}"); TRANSPARENT=()
  PX=$(free_port); AD_MANY=$(free_port)
  POLICIES="$many" start_toolgate "$work/data-many" "$PX" "$AD_MANY"
  run "GET keep-alive c=1 1000 contracts"  -c 1  "$URL_GET"
  run "GET keep-alive c=16 1000 contracts" -c 16 "$URL_GET"
  kill "$GATE" 2>/dev/null || true; wait "$GATE" 2>/dev/null || true
  GATE=$ONE_GATE; PX=$ONE_PX; TRANSPARENT=("${SAVED_TP[@]}")
fi

# Observability: the same read with every call traced (OTLP/HTTP, sampled 100 % and 1 %) and
# with an audit sink streaming every event (OCSF over HTTP), each on a toolgate of its own; a
# collector on the load's core answers every POST (spans and event batches) at once.
if [ -z "$ONLY" ] || [[ "GET c=16 traced 100% traced 1% audit sink" == *"$ONLY"* ]]; then
  COL=$(free_port)
  "${PIN_LOAD[@]}" python3 - "$COL" <<'PY' 2>/dev/null & pids+=($!)
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
  ONE_GATE=$GATE; ONE_PX=$PX; SAVED_TP=("${TRANSPARENT[@]}"); TRANSPARENT=()
  for variant in "traced 100%" "traced 1%" "audit sink"; do
    case "$variant" in
      "traced 100%") EXTRA=(--otlp-endpoint "http://127.0.0.1:$COL"); export OTEL_TRACES_SAMPLER=always_on ;;
      "traced 1%") EXTRA=(--otlp-endpoint "http://127.0.0.1:$COL"); export OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 ;;
      *) EXTRA=(--audit-sink "http://127.0.0.1:$COL/events"); unset OTEL_TRACES_SAMPLER OTEL_TRACES_SAMPLER_ARG ;;
    esac
    PX=$(free_port); AD_OBS=$(free_port)
    start_toolgate "$work/data-obs-${variant//[^a-z0-9]/}" "$PX" "$AD_OBS"
    run "GET c=16 $variant" -c 16 "$URL_GET"
    kill "$GATE" 2>/dev/null || true; wait "$GATE" 2>/dev/null || true
  done
  EXTRA=(); unset OTEL_TRACES_SAMPLER OTEL_TRACES_SAMPLER_ARG
  GATE=$ONE_GATE; PX=$ONE_PX; TRANSPARENT=("${SAVED_TP[@]}")
fi

# Idle tunnels: a toolgate of their own (its RSS not shared with the scenarios above), room for
# them (--max-connections, per agent) and an idle timeout longer than the scenario.
if [ -z "$ONLY" ] || [[ "idle tunnels c=16" == *"$ONLY"* ]]; then
  ONE_GATE=$GATE; ONE_PX=$PX; SAVED_TP=("${TRANSPARENT[@]}"); TRANSPARENT=()
  PX=$(free_port); AD_IDLE=$(free_port)
  EXTRA=(--max-connections "$((TUNNELS * 2))" --max-connections-per-agent "$((TUNNELS * 2))" --idle-timeout 30m)
  start_toolgate "$work/data-idle" "$PX" "$AD_IDLE"
  EXTRA=()
  d=$(mktemp -d -p "$work")
  rss() { awk '/^VmRSS/ {print $2}' "/proc/$GATE/status"; }
  for i in $(seq 1 "$RUNS"); do proxied -c 16 "$URL_GET" > "$d/d.$i"; done
  RSS_WITHOUT=$(rss)
  "${PIN_LOAD[@]}" python3 bench/idle_tunnels.py "$PX" "$TUNNELS" "$work/certs/ca.pem" "bench:bench-token" \
    "$work/tunnels.ready" 2>"$work/tunnels.log" & HOLDER=$!; pids+=($HOLDER)
  for _ in $(seq 1 3000); do [ -s "$work/tunnels.ready" ] && break; kill -0 "$HOLDER" 2>/dev/null || break; sleep 0.1; done
  if [ -s "$work/tunnels.ready" ]; then
    HELD=$(cat "$work/tunnels.ready")
    RSS_WITH=$(rss)
    for i in $(seq 1 "$RUNS"); do
      if [ "$i" = 1 ]; then start_perf "idle tunnels c=16"; fi
      proxied -c 16 "$URL_GET" > "$d/t.$i"
      stop_perf
    done
    OPEN=$(ls "/proc/$GATE/fd" | wc -l)
    report "idle tunnels c=16" "$d" | sed 's/ direct / without tunnels /; s/| toolgate /| with tunnels /'
    echo "  $HELD idle tunnels held ($OPEN fds open in toolgate): RSS $((RSS_WITHOUT / 1024)) MiB without, $((RSS_WITH / 1024)) MiB with: $(( (RSS_WITH - RSS_WITHOUT) / (HELD > 0 ? HELD : 1) )) KiB per idle tunnel"
    say_profile
  else
    echo "idle tunnels: the client did not open $TUNNELS tunnels:"; tail -5 "$work/tunnels.log"
  fi
  kill "$HOLDER" 2>/dev/null || true; wait "$HOLDER" 2>/dev/null || true
  kill "$GATE" 2>/dev/null || true; wait "$GATE" 2>/dev/null || true
  GATE=$ONE_GATE; PX=$ONE_PX; TRANSPARENT=("${SAVED_TP[@]}")
fi

if [ -n "$ONLY" ] && [[ "sigterm" != *"$ONLY"* ]]; then exit 0; fi
TRANSPARENT=()
# The stop under load: a fresh toolgate and data dir, its own upstream count.
kill "$GATE" 2>/dev/null || true; wait "$GATE" 2>/dev/null || true
kill -TERM "$UPSTREAM"; wait "$UPSTREAM" 2>/dev/null || true
UP2=$(free_port); PX2=$(free_port); AD2=$(free_port)
"${PIN_LOAD[@]}" "$TARGET/release/examples/echo_upstream" --listen "127.0.0.1:$UP2" --ca-out "$work/up-ca.pem" api.stripe.com \
  2>"$work/upstream2.log" & UPSTREAM=$!; pids+=($UPSTREAM)
sleep 0.5
UP=$UP2 start_toolgate "$work/data2" "$PX2" "$AD2"
"${PIN_LOAD[@]}" oha --no-tui --output-format json -z "$((LOAD_SECONDS + 10))s" --cacert "$work/certs/ca.pem" \
  -x "http://127.0.0.1:$PX2" --proxy-header "$AUTH" --no-pre-lookup -c 16 "$URL_GET" > "$work/load.json" 2>/dev/null & LOAD=$!
sleep "$LOAD_SECONDS"
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$GATE/status")
kill -TERM "$GATE"
wait "$GATE" || true
kill "$LOAD" 2>/dev/null || true; wait "$LOAD" 2>/dev/null || true
kill -TERM "$UPSTREAM"; wait "$UPSTREAM" 2>/dev/null || true
SERVED=$(awk '/^served/ {print $2}' "$work/upstream2.log")
"$TARGET/release/toolgate" audit export --data-dir "$work/data2" > "$work/export.jsonl"
python3 - "$work" "$SERVED" "$RSS_KB" "$LOAD_SECONDS" "$TARGET/release/toolgate" <<'PY'
import json, os, subprocess, sys, time, resource
work, served, rss_kb, secs = sys.argv[1], int(sys.argv[2] or 0), int(sys.argv[3] or 0), sys.argv[4]
toolgate = sys.argv[5]
ids, audited = [], 0
for line in open(f"{work}/export.jsonl"):
    e = json.loads(line)
    if e["kind"] == "request":
        audited += 1
        ids.append(e["request_id"])
disk = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(f"{work}/data2") for f in fs)
rid = ids[len(ids) // 2] if ids else "none"
t0 = time.time()
subprocess.run([toolgate, "audit", "story", rid, "--data-dir", f"{work}/data2"],
               stdout=subprocess.DEVNULL, check=False)
story_s = time.time() - t0
story_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
missing = served - audited
print(f"sigterm after {secs}s of reads at c=16: upstream received {served}, audited {audited} "
      f"(missing {max(missing, 0)}, {100 * max(missing, 0) / max(served, 1):.2f}%)")
print(f"  toolgate peak RSS {rss_kb / 1024:.0f} MiB; audit story of one request among {audited} events: "
      f"{story_s:.2f} s, {story_kb / 1024:.0f} MiB; disk {disk / max(audited, 1):.0f} B per audited request")
PY
