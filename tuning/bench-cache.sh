#!/usr/bin/env bash
# The response cache, measured: one shard on CPU 0, `friday bench` on CPU 1, ROUNDS rounds with
# the modes alternating, medians.
#   1. paraphrase-MiniLM-L3-v2 (sequence SEQ) at a realistic repeat ratio: 80 % of requests drawn
#      from 1,000 distinct inputs, 20 % seen once (40,000 requests in the input file, shuffled).
#      Closed loop at concurrency 8: throughput, p50/p99 and the hit rate from the statistics
#      extension, with the cache off and on.
#   2. What a miss costs against no cache at all, on `identity` (a model that costs nothing, so
#      the cache's own work shows): 50,000 distinct 256-byte inputs sent in turn, to a cache of
#      1 MiB (about 1,300 answers: an input comes back long after it was evicted, so every lookup
#      misses, stores and evicts) and to one of 64 MiB that holds them all (every lookup after
#      the warm-up hits). Concurrency 1 and 8, and the server's own time per lookup from
#      `cache_miss` / `cache_hit` in the statistics.
#
#   tuning/bench-cache.sh                 # DURATION=10s ROUNDS=3 SEQ=16
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
SEQ=${SEQ:-16}
BIN=${BIN:-target/release/friday}
PORT=18094
URL=http://127.0.0.1:$PORT
# shellcheck source=tuning/minilm-common.sh
source tuning/minilm-common.sh

python3 - "$SEQ" > "$tmp/input.json" <<'PYEOF'
import json, random, sys
seq = int(sys.argv[1])
rng = random.Random(13)
def sample():
    ids = [101] + [rng.randrange(1000, 30000) for _ in range(seq - 2)] + [102]
    return {"input_ids": ids, "attention_mask": [1] * seq}
hot = [sample() for _ in range(1000)]
data = [rng.choice(hot) if rng.random() < 0.8 else sample() for _ in range(40000)]
json.dump({"data": data}, sys.stdout)
PYEOF

printf '[models.minilm]\nresponse_cache = false\n' > "$tmp/off.toml"
printf '[models.minilm]\nresponse_cache = true\n[cache]\nsize_bytes = 268435456\n' > "$tmp/on.toml"

stat() { # stat MODEL: hits misses hit_ns_per misses_ns_per
  curl -s "$URL/v2/models/$1/stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)["model_stats"][0]["inference_stats"]
h, m = s["cache_hit"], s["cache_miss"]
print(h["count"], m["count"], h["ns"] / max(h["count"], 1), m["ns"] / max(m["count"], 1))'
}

bench() { # bench JSON ARGS…
  local out=$1
  shift
  taskset -c 1 "$BIN" bench --url "$URL" --cpus 1 --duration "$DURATION" --warmup 2s --quiet \
    --json "$out" "$@" > /dev/null
}

row() { # row LABEL FILES…: medians of throughput, p50, p99 over the rounds
  python3 - "$@" <<'PYEOF'
import json, statistics, sys
label, files = sys.argv[1], sys.argv[2:]
rs = [json.load(open(f)) for f in files]
med = lambda f: statistics.median(f(r) for r in rs)
errors = sum(sum(r["errors"].values()) for r in rs)
print(f"  {label:<34} {med(lambda r: r['throughput']):9.1f} req/s  p50 {med(lambda r: r['latency_us']['p50']):9.1f} us"
      f"  p99 {med(lambda r: r['latency_us']['p99']):9.1f} us  errors {errors}")
PYEOF
}

echo "1. MiniLM, sequence $SEQ, 80 % of requests from 1,000 inputs; concurrency 8, medians of $ROUNDS"
for r in $(seq "$ROUNDS"); do
  for mode in off on; do
    start 0 "$tmp/$mode.toml"
    bench "$tmp/minilm-$mode-$r.json" --model minilm --concurrency 8 \
      --input-data "$tmp/input.json" --shape "input_ids:$SEQ" --shape "attention_mask:$SEQ"
    [ "$mode" = on ] && stat minilm > "$tmp/minilm-stat-$r"
    stop
  done
done
row "cache off" "$tmp"/minilm-off-*.json
row "cache on (256 MiB)" "$tmp"/minilm-on-*.json
for r in $(seq "$ROUNDS"); do
  read -r hits misses hit_ns miss_ns < "$tmp/minilm-stat-$r"
  python3 -c "print(f'  round $r: hit rate {100 * $hits / ($hits + $misses):.1f} % ($hits hits, $misses misses); server time per hit {$hit_ns / 1e3:.1f} us, per miss {$miss_ns / 1e3:.1f} us')"
done

echo "2. identity, 50,000 distinct 256-byte inputs in turn; medians of $ROUNDS"
python3 - > "$tmp/identity.json" <<'PYEOF'
import json, random
rng = random.Random(5)
json.dump({"data": [{"INPUT0": [rng.randrange(1 << 20) for _ in range(64)]} for _ in range(50000)]}, __import__("sys").stdout)
PYEOF
printf '[models.identity]\nresponse_cache = false\n' > "$tmp/id-off.toml"
printf '[models.identity]\nresponse_cache = true\n[cache]\nsize_bytes = 1048576\n' > "$tmp/id-miss.toml"
printf '[models.identity]\nresponse_cache = true\n[cache]\nsize_bytes = 67108864\n' > "$tmp/id-hit.toml"
for c in 1 8; do
  for r in $(seq "$ROUNDS"); do
    for mode in off miss hit; do
      start 0 "$tmp/id-$mode.toml"
      bench "$tmp/id-$c-$mode-$r.json" --model identity --concurrency "$c" --shape INPUT0:64 \
        --input-data "$tmp/identity.json"
      [ "$mode" != off ] && stat identity > "$tmp/id-stat-$c-$mode-$r"
      stop
    done
  done
  row "c$c no cache" "$tmp"/id-"$c"-off-*.json
  row "c$c cache, every lookup misses" "$tmp"/id-"$c"-miss-*.json
  row "c$c cache, every lookup hits" "$tmp"/id-"$c"-hit-*.json
  cat "$tmp"/id-stat-"$c"-miss-* | python3 -c "
import statistics, sys
rows = [l.split() for l in sys.stdin]
print(f'  c$c all-miss: hits {sum(int(r[0]) for r in rows)}, server time per miss (lookup, store, evict) median {statistics.median(float(r[3]) for r in rows) / 1e3:.2f} us')"
  cat "$tmp"/id-stat-"$c"-hit-* | python3 -c "
import statistics, sys
rows = [l.split() for l in sys.stdin]
print(f'  c$c all-hit: misses {sum(int(r[1]) for r in rows)}, server time per hit (lookup, copy) median {statistics.median(float(r[2]) for r in rows) / 1e3:.2f} us')"
done
