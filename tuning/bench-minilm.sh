#!/usr/bin/env bash
# paraphrase-MiniLM-L3-v2 (sequence 128) served from a model repository: one shard on CPU 0,
# `friday bench` on CPU 1. In one run:
#   - load time to ready and resident memory with 1 and 2 shards;
#   - throughput and p50/p99 at concurrency 1, 8 and 32, batching off (max_batch_size 1) and on
#     (max_batch_size 8, 2 ms queue delay), with friday's per-batch compute time from the
#     statistics extension;
#   - ONNX Runtime in Python, one thread on CPU 0, per batch at the same sizes;
#   - p99 before and during a hot swap (explicit mode: a second version loaded while an open
#     loop at RATE req/s runs).
#
#   tuning/bench-minilm.sh                 # DURATION=10s RATE=20
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
RATE=${RATE:-20}
BIN=${BIN:-target/release/friday}
PORT=18093
URL=http://127.0.0.1:$PORT
source tuning/minilm-common.sh
python3 tuning/minilm-inputs.py 128 > "$tmp/input.json"

bench() { # bench JSON ARGS…
  local out=$1
  shift
  taskset -c 1 "$BIN" bench --url "$URL" --model minilm --cpus 1 --input-data "$tmp/input.json" \
    --shape input_ids:128 --shape attention_mask:128 --duration "$DURATION" --warmup 2s \
    --quiet --json "$out" "$@" > /dev/null
}
summary() { # summary LABEL JSON
  python3 - "$@" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[2]))
l = r["latency_us"]
print(f"  {sys.argv[1]:<24} {r['throughput']:7.1f} req/s  mean {l['mean']/1e3:7.1f} ms  p50 {l['p50']/1e3:7.1f} ms  p99 {l['p99']/1e3:7.1f} ms  errors {sum(r['errors'].values())}")
PYEOF
}
compute() { # per-batch compute from the statistics extension
  curl -s "$URL/v2/models/minilm/stats" > "$tmp/stats.json"
  python3 - "$tmp/stats.json" <<'PYEOF'
import json, sys
for m in json.load(open(sys.argv[1]))["model_stats"]:
    for b in m["batch_stats"]:
        c = b["compute_infer"]
        size, n, ms = b["batch_size"], c["count"], c["ns"] / c["count"] / 1e6
        print(f"  friday batch {size:>2}: {n:5} batches, {ms:6.2f} ms per batch")
PYEOF
}

echo "== load time and resident memory"
printf '[models.minilm]\nmax_batch_size = 1\n' > "$tmp/off.toml"
for shards in 0 0-1; do
  start "$shards" "$tmp/off.toml"
  grep -o 'load_ms=[0-9]* ready_ms=[0-9]* resident_mib=[0-9]*' "$tmp/server.log" | head -1 | sed "s/^/  CPUs $shards: /"
  # every shard runs it once, then resident memory
  for _ in 1 2 3 4; do
    curl -s -o /dev/null -d "$(python3 -c 'import json;d=json.load(open("'"$tmp"'/input.json"))["data"][0];print(json.dumps({"inputs":[{"name":k,"datatype":"INT64","shape":[1,128],"data":v} for k,v in d.items()]}))')" "$URL/v2/models/minilm/infer"
  done
  echo "  CPUs $shards: $(grep VmRSS /proc/$server/status)"
  stop
done

printf '[models.minilm]\nmax_batch_size = 8\n[models.minilm.dynamic_batching]\nmax_queue_delay_microseconds = 2000\n' > "$tmp/on.toml"
for batching in off on; do
  echo "== batching $batching"
  start 0 "$tmp/$batching.toml"
  for c in 1 8 32; do
    bench "$tmp/$batching-c$c.json" --concurrency "$c"
    summary "c$c" "$tmp/$batching-c$c.json"
  done
  compute
  stop
done
echo "== ONNX Runtime, one thread on CPU 0"
taskset -c 0 python3 tuning/minilm-ort.py "$tmp/repo/minilm/1/model.onnx" "$tmp/input.json" 1 8 | sed 's/^/  /'

echo "== hot swap (explicit mode, open loop at $RATE req/s)"
printf '[models.minilm]\nmax_batch_size = 1\n' > "$tmp/swap.toml"
start 0 "$tmp/swap.toml" --model-control-mode explicit --load-model minilm
bench "$tmp/before.json" --rate "$RATE"
summary "before" "$tmp/before.json"
mkdir -p "$tmp/repo/minilm/.2" && cp "$tmp/repo/minilm/1/model.onnx" "$tmp/repo/minilm/.2/" && mv "$tmp/repo/minilm/.2" "$tmp/repo/minilm/2"
( sleep 4; curl -s -X POST -o /dev/null -w "  load returned %{http_code} after %{time_total}s\n" "$URL/v2/repository/models/minilm/load" ) &
swapper=$!
bench "$tmp/during.json" --rate "$RATE"
wait "$swapper"
summary "during (swap at +4 s)" "$tmp/during.json"
curl -s "$URL/v2/models/minilm" | python3 -c 'import json,sys; print("  versions now:", json.load(sys.stdin)["versions"])'
stop
