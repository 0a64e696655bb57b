#!/usr/bin/env bash
# Where does a request's time go? Runs friday pinned to one CPU under perf_analyzer load from
# another CPU, samples the server with `perf record` (DWARF call graphs), and writes a flame graph
# plus a per-layer breakdown of the server CPU's time.
#
#   tuning/profile-identity.sh                 # c=16, server CPU 0, load CPU 1
#   CONCURRENCY=1 OUT=/tmp/c1 tuning/profile-identity.sh
#
# Needs linux-perf (`perf`) and inferno (`cargo install inferno`). Read-only: changes nothing on
# the host beyond files under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
CONCURRENCY=${CONCURRENCY:-16}
PORT=${PORT:-18124}
OUT=${OUT:-/tmp/friday-profile}
mkdir -p "$OUT"

cargo build --release --quiet
./target/release/friday serve --http-address 127.0.0.1 --http-port "$PORT" --cpus "$SERVER_CPU" >"$OUT/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf "127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 0.1; done

taskset -c "$CLIENT_CPU" bash tuning/perf-analyzer.sh -m identity -u "127.0.0.1:$PORT" -i http \
  --shape INPUT0:16 --concurrency-range "$CONCURRENCY:$CONCURRENCY" -p 3000 >"$OUT/perf_analyzer.txt" 2>&1 &
load=$!
sleep 4
perf record -F 1999 --call-graph dwarf,16384 -e cpu-clock -p "$server" -o "$OUT/perf.data" -- sleep 3 2>/dev/null
wait $load || true
perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf >"$OUT/friday.folded"
inferno-flamegraph --title "friday identity, perf_analyzer c=$CONCURRENCY" <"$OUT/friday.folded" >"$OUT/flamegraph.svg"

python3 - "$OUT/friday.folded" <<'PY'
import collections, sys
layers = [
    ("ShardService::handle", "friday service: route, v2 decode, model, v2 encode, stats"),
    ("decode_infer_request", "  v2 request decode"),
    ("encode_infer_response", "  v2 response encode"),
    ("RequestDecoder::decode", "friday HTTP parse"),
    ("yolo_recv", "recv syscalls (kernel TCP receive)"),
    ("yolo_send", "send syscalls (kernel TCP send, waking the client)"),
    ("io_uring_enter", "glommio io_uring_enter"),
    ("io_cqring_wait", "  waiting for events (idle)"),
    ("Reactor::react", "glommio reactor bookkeeping"),
    ("clock_gettime", "clock reads (glommio and friday)"),
]
total, hits = 0, collections.Counter()
for line in open(sys.argv[1]):
    stack, n = line.rsplit(" ", 1)
    n = int(n)
    total += n
    for key, name in layers:
        if key in stack:
            hits[name] += n
print("share of the server CPU's samples (layers overlap where indented):")
for _, name in layers:
    print(f"{100 * hits[name] / max(total, 1):6.1f}%  {name}")
PY
grep -E "Throughput|p50 latency|p99 latency|Avg request latency" "$OUT/perf_analyzer.txt" || true
echo "flame graph: $OUT/flamegraph.svg"
