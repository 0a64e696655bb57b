#!/usr/bin/env bash
# Low-load latency, side by side in one run: `friday bench` against `identity` (INPUT0:16, binary),
# closed loop at concurrency 1 and open loop (Poisson) at RATE req/s, for each engine with busy
# polling on (the default) and off. Server on CPU 0, client on CPU 1; ROUNDS alternating rounds;
# prints every run, then the median p50/p99/p99.9 per configuration.
#
#   tuning/bench-latency.sh
#   ROUNDS=5 RATE=5000 DURATION=10s tuning/bench-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
RATE=${RATE:-5000}
DURATION=${DURATION:-5s}
BIN=${BIN:-target/release/friday}
PORT=18091
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
printf '[shards]\nbusy_poll_us = 0\n' > "$tmp/nopoll.toml"
printf '[shards]\n' > "$tmp/poll.toml"

one() { # one LABEL ENGINE CONFIG LOAD…
  local label=$1 engine=$2 config=$3
  shift 3
  taskset -c 0 "$BIN" serve --cpus 0 --http-address 127.0.0.1 --http-port $PORT \
    --engine "$engine" --config "$config" > "$tmp/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/v2/health/ready" && break
    sleep 0.05
  done
  taskset -c 1 "$BIN" bench --url "http://127.0.0.1:$PORT" --shape INPUT0:16 --cpus 1 \
    --duration "$DURATION" --warmup 1s --quiet --json "$tmp/run.json" "$@" > /dev/null
  kill -TERM $pid
  wait $pid 2>/dev/null || true
  python3 - "$label" "$tmp/run.json" >> "$tmp/results" <<'EOF'
import json, sys
r = json.load(open(sys.argv[2]))
l = r["latency_us"]
print(sys.argv[1], r["throughput"], l["p50"], l["p99"], l["p999"], l["max"])
EOF
  tail -1 "$tmp/results" | awk '{printf "  %-28s %9.0f req/s  p50 %6.1f  p99 %7.1f  p99.9 %7.1f  max %8.1f µs\n", $1, $2, $3, $4, $5, $6}'
}

for round in $(seq "$ROUNDS"); do
  echo "round $round"
  for engine in io_uring epoll; do
    for poll in poll nopoll; do
      one "c1/$engine/$poll" "$engine" "$tmp/$poll.toml" --concurrency 1
      one "open$RATE/$engine/$poll" "$engine" "$tmp/$poll.toml" --rate "$RATE"
    done
  done
done

echo
echo "medians over $ROUNDS rounds (µs); worst p99.9 of any round last"
python3 - "$tmp/results" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    k, *v = line.split()
    runs.setdefault(k, []).append([float(x) for x in v])
for k in sorted(runs):
    rs = runs[k]
    med = [statistics.median(r[i] for r in rs) for i in range(5)]
    worst = max(r[3] for r in rs)
    print(f"  {k:<28} {med[0]:9.0f} req/s  p50 {med[1]:6.1f}  p99 {med[2]:7.1f}  p99.9 {med[3]:7.1f}  (worst {worst:.1f})")
EOF
