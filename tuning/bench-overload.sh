#!/usr/bin/env bash
# Overload: goodput at 10x offered load against the peak, and readiness meanwhile, for a model on
# each placement. `friday bench` against MODEL (default `synthetic`, INPUT0:16, binary) with
# `max_queue_size = QUEUE` (64): the peak is a closed loop at concurrency PEAK_C (32); the storm
# is a closed loop at 10x that concurrency, then an open loop at 10x the peak's rate over
# STORM_CONNS connections. During each storm a second client (at a higher priority) probes
# GET /v2/health/ready at 50/s on a connection of its own. Server on CPU 0, clients on CPU 1; ROUNDS rounds; prints every run,
# then medians of goodput as a share of the peak, readiness p99/max and the server's peak RSS.
#
#   tuning/bench-overload.sh
#   ROUNDS=3 PLACEMENTS="worker" DURATION=10s tuning/bench-overload.sh
#   BIN=/tmp/friday-old tuning/bench-overload.sh      # an older server, the same client
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
MODEL=${MODEL:-synthetic}
QUEUE=${QUEUE:-64}
PEAK_C=${PEAK_C:-32}
STORM_CONNS=${STORM_CONNS:-512}
PLACEMENTS=${PLACEMENTS:-worker inline}
DURATION=${DURATION:-5s}
BIN=${BIN:-target/release/friday}
# The load generator: this tree's friday bench, whatever server BIN is (an older build, say).
BENCH=${BENCH:-target/release/friday}
PORT=18092
URL="http://127.0.0.1:$PORT"
NICE="nice -n -10"
$NICE true 2>/dev/null || NICE=""
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

start() { # start PLACEMENT
  printf '[models.%s]\nplacement = "%s"\n[models.%s.dynamic_batching]\nmax_queue_size = %s\n' \
    "$MODEL" "$1" "$MODEL" "$QUEUE" > "$tmp/config.toml"
  taskset -c 0 "$BIN" serve --cpus 0 --http-address 127.0.0.1 --http-port $PORT \
    --config "$tmp/config.toml" > "$tmp/server.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "$URL/v2/health/ready" && return
    sleep 0.05
  done
  echo "the server did not start:"; cat "$tmp/server.log"; exit 1
}

load() { # load OUT.json ARGS…: one friday bench run on CPU 1
  local out=$1
  shift
  taskset -c 1 "$BENCH" bench --url "$URL" --model "$MODEL" --shape INPUT0:16 --cpus 1 \
    --duration "$DURATION" --warmup 1s --quiet --json "$out" "$@" > /dev/null
}

field() { # field FILE.json EXPR (python, r = the run)
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print($2)" "$1"
}

for round in $(seq "$ROUNDS"); do
  for placement in $PLACEMENTS; do
    start "$placement"
    load "$tmp/peak.json" --concurrency "$PEAK_C"
    peak=$(field "$tmp/peak.json" 'r["ok"] / r["config"]["duration_s"]')
    rate=$(python3 -c "print(int(10 * $peak))")
    for storm in "closed:--concurrency $((10 * PEAK_C))" \
      "open:--rate $rate --connections $STORM_CONNS"; do
      name=${storm%%:*}
      # The probe outlasts the storm's warm-up and window; it runs at a higher priority than
      # the load on the same CPU, so that what it measures is the server, not its wait for CPU
      # behind a load generator that spins (ordinary priority where the host refuses).
      $NICE taskset -c 1 "$BENCH" bench --url "$URL" --http-get /v2/health/ready --rate 50 \
        --connections 1 --cpus 1 --duration "$DURATION" --warmup 1s --quiet \
        --json "$tmp/probe.json" > /dev/null &
      probe=$!
      # shellcheck disable=SC2086
      load "$tmp/storm.json" ${storm#*:}
      wait $probe
      good=$(field "$tmp/storm.json" 'r["delivered"]')
      refused=$(field "$tmp/storm.json" 'r["errors"].get("http_429", 0)')
      ready=$(field "$tmp/probe.json" '"%.2f %.2f" % (r["latency_us"]["p99"] / 1e3, r["latency_us"]["max"] / 1e3)')
      rss=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$server/status")
      share=$(python3 -c "print(round($good / $peak, 3))")
      echo "$placement $name $peak $good $share $refused $ready $rss" >> "$tmp/results"
      printf '%-7s %-6s peak %7.0f ok/s  storm %7.0f ok/s (%5.1f %%)  %8d x 429  ready p99 %5.2f ms max %6.2f ms  RSS %4d MiB\n' \
        "$placement" "$name" "$peak" "$good" "$(python3 -c "print($share * 100)")" "$refused" $ready "$rss"
    done
    kill -TERM "$server"
    wait "$server" 2>/dev/null || true
  done
done

echo
echo "medians over $ROUNDS rounds"
python3 - "$tmp/results" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    p, name, *v = line.split()
    runs.setdefault((p, name), []).append([float(x) for x in v])
for (p, name), rs in runs.items():
    med = [statistics.median(col) for col in zip(*rs)]
    print(f"{p:7} {name:6} goodput {med[2] * 100:5.1f} % of peak ({med[1]:.0f} of {med[0]:.0f} ok/s)"
          f"  429s {med[3]:.0f}  ready p99 {med[4]:.2f} ms max {med[5]:.2f} ms  RSS {med[6]:.0f} MiB")
EOF
