#!/usr/bin/env bash
# Measures friday's HTTP + KServe v2 hot path with Triton's perf_analyzer on the built-in
# `identity` model: friday pinned to one CPU, perf_analyzer pinned to another, so the two never
# share a core. Runs each concurrency REPEATS times and prints every run plus the median.
# MODEL, SHAPE and FRIDAY_ARGS (e.g. "--config my.toml") select what is measured.
#
#   tuning/bench-perf-analyzer.sh                  # server on CPU 0, load on CPU 1, c=1 and c=16
#   SERVER_CPU=2 CLIENT_CPU=3 CONCURRENCY="1 8 64" REPEATS=5 tuning/bench-perf-analyzer.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
CONCURRENCY=${CONCURRENCY:-"1 16"}
REPEATS=${REPEATS:-3}
PORT=${PORT:-18123}
# perf_analyzer summarizes each window in time quadratic in the requests it holds: a 3-second
# window at 30k infer/s kept it busy for minutes (gdb: InferenceProfiler::ValidLatencyMeasurement).
# Count windows bound that work whatever the throughput.
WINDOW_REQUESTS=${WINDOW_REQUESTS:-30000}

cargo build --release --quiet
bash tuning/perf-analyzer.sh install >/dev/null
MODEL=${MODEL:-identity}
SHAPE=${SHAPE:-INPUT0:16}
FRIDAY_ARGS=${FRIDAY_ARGS:-}
# shellcheck disable=SC2086 # FRIDAY_ARGS is a list of arguments
./target/release/friday serve --http-address 127.0.0.1 --http-port "$PORT" --cpus "$SERVER_CPU" $FRIDAY_ARGS >/tmp/friday-bench.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf "127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 0.1; done

for c in $CONCURRENCY; do
  rows=()
  for r in $(seq "$REPEATS"); do
    csv=$(mktemp)
    taskset -c "$CLIENT_CPU" bash tuning/perf-analyzer.sh -m "$MODEL" -u "127.0.0.1:$PORT" -i http \
      --shape "$SHAPE" --concurrency-range "$c:$c" --measurement-mode count_windows \
      --measurement-request-count "$WINDOW_REQUESTS" -f "$csv" >/dev/null
    # CSV columns: Concurrency, Inferences/Second, Client Send, ..., p50, p90, p95, p99, Avg latency, ...
    row=$(python3 - "$csv" <<'PY'
import csv, sys
r = next(csv.DictReader(open(sys.argv[1])))
print(f"{float(r['Inferences/Second']):.0f} {int(r['p50 latency'])} {int(r['p99 latency'])}")
PY
)
    rm -f "$csv"
    echo "c=$c run=$r infer/s p50_us p99_us: $row"
    rows+=("$row")
  done
  printf '%s\n' "${rows[@]}" | python3 -c "
import sys, statistics
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
med = [statistics.median(col) for col in zip(*rows)]
print(f'$MODEL c=$c median: {med[0]:.0f} infer/s, p50 {med[1]:.0f} us, p99 {med[2]:.0f} us')"
done
