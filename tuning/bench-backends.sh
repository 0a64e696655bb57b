#!/usr/bin/env bash
# paraphrase-MiniLM-L3-v2 on friday's two ONNX backends, rten and ONNX Runtime, against ONNX
# Runtime in Python on one thread, in one run. One shard on CPU 0, `friday bench` on CPU 1, the
# Python baseline on CPU 0 while no server runs. For sequence lengths 16 and 128:
#   - per-batch compute at batch 1, 8 and 32: friday's compute_infer per batch from the
#     statistics extension (requests sent at that batch size, one at a time), and the median of
#     a batch in Python (tuning/minilm-ort.py);
#   - end to end at concurrency 1 and 16 (requests of one sequence, dynamic batching up to 32):
#     throughput, p50, p99, and the overhead at concurrency 1: the mean latency the client saw
#     less the mean compute of those requests' batches (statistics before and after the run);
# then resident memory after every shard has run the model, with 1 and 2 shards.
#
#   tuning/bench-backends.sh          # DURATION=8s (end to end), COMPUTE=6s (per batch size)
# Needs ONNX Runtime's library: ORT_DYLIB_PATH, or the onnxruntime wheel (installed if absent).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8s}
COMPUTE=${COMPUTE:-6s}
BIN=${BIN:-target/release/friday}
PORT=18094
URL=http://127.0.0.1:$PORT
source tuning/minilm-common.sh
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ORT_DYLIB_PATH=$(python3 -c "import onnxruntime, os, glob; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so*')))[0])")
  export ORT_DYLIB_PATH
fi
echo "ONNX Runtime: $ORT_DYLIB_PATH"

bench() { # bench SEQ BATCH JSON DURATION ARGS…
  local seq=$1 batch=$2 out=$3 duration=$4
  shift 4
  taskset -c 1 "$BIN" bench --url "$URL" --model minilm --cpus 1 --batch-size "$batch" \
    --input-data "$tmp/input-$seq-$batch.json" \
    --shape "input_ids:$seq" --shape "attention_mask:$seq" --duration "$duration" --warmup 1s \
    --quiet --json "$out" "$@" > /dev/null
}

for backend in rten onnxruntime; do
  printf '[models.minilm]\nmax_batch_size = 32\nbackend = "%s"\n' "$backend" > "$tmp/$backend.toml"
done
for seq in 16 128; do
  python3 tuning/minilm-inputs.py "$seq" > "$tmp/input-$seq.json"
  # friday bench takes a whole request's values per entry: B sequences for batch B.
  for b in 1 8 32; do
    python3 - "$tmp/input-$seq.json" "$b" > "$tmp/input-$seq-$b.json" <<'PYEOF'
import json, sys
rows, b = json.load(open(sys.argv[1]))["data"], int(sys.argv[2])
batches = [{k: sum((rows[(i + j) % len(rows)][k] for j in range(b)), []) for k in rows[0]} for i in range(len(rows))]
json.dump({"data": batches}, sys.stdout)
PYEOF
  done
  for backend in rten onnxruntime; do
    start 0 "$tmp/$backend.toml"
    for b in 1 8 32; do
      bench "$seq" "$b" "$tmp/compute-$backend-$seq-$b.json" "$COMPUTE" --concurrency 1
    done
    curl -s "$URL/v2/models/minilm/stats" > "$tmp/stats-$backend-$seq.json"
    for c in 1 16; do
      bench "$seq" 1 "$tmp/e2e-$backend-$seq-c$c.json" "$DURATION" --concurrency "$c"
      curl -s "$URL/v2/models/minilm/stats" > "$tmp/stats-$backend-$seq-c$c.json"
    done
    stop
  done
  taskset -c 0 python3 tuning/minilm-ort.py "$tmp/repo/minilm/1/model.onnx" "$tmp/input-$seq.json" 1 8 32 \
    > "$tmp/python-$seq.txt"
done

echo "== resident memory after every shard ran the model (VmRSS, MiB)"
python3 - "$tmp/input-128.json" > "$tmp/one.json" <<'PYEOF'
import json, sys
row = json.load(open(sys.argv[1]))["data"][0]
print(json.dumps({"inputs": [{"name": k, "datatype": "INT64", "shape": [1, len(v)], "data": v} for k, v in row.items()]}))
PYEOF
for backend in rten onnxruntime; do
  line="  $backend:"
  for cpus in 0 0-1; do
    start "$cpus" "$tmp/$backend.toml"
    for _ in 1 2 3 4 5 6; do curl -s -o /dev/null -d @"$tmp/one.json" "$URL/v2/models/minilm/infer"; done
    line="$line $(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$server/status") (CPUs $cpus)"
    stop
  done
  echo "$line"
done

python3 - "$tmp" <<'PYEOF'
import json, sys
tmp = sys.argv[1]
def batches(path):
    stats = json.load(open(path))["model_stats"][0]["batch_stats"]
    return {b["batch_size"]: (b["compute_infer"]["count"], b["compute_infer"]["ns"]) for b in stats}
def compute(backend, seq):
    return {b: ns / n / 1e6 for b, (n, ns) in batches(f"{tmp}/stats-{backend}-{seq}.json").items()}
def compute_during_c1(backend, seq):
    (n0, ns0), (n1, ns1) = (batches(f"{tmp}/stats-{backend}-{seq}{s}.json")[1] for s in ("", "-c1"))
    return (ns1 - ns0) / (n1 - n0) / 1e6
for seq in (16, 128):
    python = {}
    for line in open(f"{tmp}/python-{seq}.txt"):
        words = line.split()
        python[int(words[2])] = float(words[4])
    rten, ort = compute("rten", seq), compute("onnxruntime", seq)
    print(f"== sequence {seq}: compute per batch, ms (ratio to Python ONNX Runtime)")
    for b in (1, 8, 32):
        print(f"  batch {b:>2}: python {python[b]:7.2f}   rten {rten[b]:7.2f} ({rten[b] / python[b]:.2f})"
              f"   onnxruntime {ort[b]:7.2f} ({ort[b] / python[b]:.2f})")
    print(f"== sequence {seq}: end to end (requests of 1 sequence)")
    for backend in ("rten", "onnxruntime"):
        for c in (1, 16):
            r = json.load(open(f"{tmp}/e2e-{backend}-{seq}-c{c}.json"))
            l = r["latency_us"]
            extra = ""
            if c == 1:
                during = compute_during_c1(backend, seq)
                extra = f"  mean {l['mean'] / 1e3:.2f} ms, compute {during:.2f} ms: overhead {l['mean'] / 1e3 - during:.2f} ms"
            print(f"  {backend:<11} c{c:<2}: {r['throughput']:7.1f} req/s  p50 {l['p50'] / 1e3:7.2f} ms"
                  f"  p99 {l['p99'] / 1e3:7.2f} ms  errors {sum(r['errors'].values())}{extra}")
PYEOF
