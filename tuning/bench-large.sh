#!/usr/bin/env bash
# Large requests next to small ones: how long a readiness probe waits behind them. Runs
# tuning/large-requests.py against one shard on CPU 0 (clients on CPU 1) for each CASE
# ("MIB OUT COUNT [json-in]"), ROUNDS rounds, and prints each run and the median worst wait.
#
#   tuning/bench-large.sh
#   ROUNDS=5 tuning/bench-large.sh
#   BIN=/tmp/friday-old tuning/bench-large.sh         # an older server, the same clients
#   PLACEMENT=worker tuning/bench-large.sh            # identity on its worker thread
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
BIN=${BIN:-target/release/friday}
PLACEMENT=${PLACEMENT:-inline}
PORT=18093
URL="http://127.0.0.1:$PORT"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
if [ -n "${CASES:-}" ]; then
  IFS=';' read -r -a cases <<< "$CASES"
else
  cases=("60 bin 1" "60 bin 8" "16 json 1" "4 bin 1 json-in")
fi

printf '[models.identity]\nplacement = "%s"\n' "$PLACEMENT" > "$tmp/config.toml"
taskset -c 0 "$BIN" serve --cpus 0 --http-address 127.0.0.1 --http-port $PORT \
  --config "$tmp/config.toml" > "$tmp/server.log" 2>&1 &
for _ in $(seq 100); do
  curl -s -o /dev/null "$URL/v2/health/ready" && break
  sleep 0.1
done

for c in "${cases[@]}"; do
  waits=()
  for _ in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    line=$(taskset -c 1 python3 tuning/large-requests.py $PORT $c)
    echo "  $line"
    waits+=("$(sed -E 's/.*worst readiness wait ([0-9.]+) ms/\1/' <<< "$line")")
  done
  median=$(printf '%s\n' "${waits[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "$c: median worst readiness wait $median ms"
done
