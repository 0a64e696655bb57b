#!/usr/bin/env bash
# Where does a request's time go? Runs friday pinned to one CPU under `friday bench` load from
# another CPU (closed loop, binary identity), samples the server with `perf record` (DWARF call
# graphs), and writes a flame graph plus a per-layer breakdown of the server CPU's time.
#
#   tuning/profile-identity.sh                         # c=16, server CPU 0, load CPU 1, default engine
#   ENGINE=epoll CONCURRENCY=1 OUT=/tmp/c1 tuning/profile-identity.sh
#   BIN=/path/to/older/friday OUT=/tmp/old tuning/profile-identity.sh   # an older build (no --engine)
#
# Needs linux-perf (`perf`); the flame graph also needs inferno (`cargo install inferno`), and is
# skipped without it. Read-only: changes nothing on the host beyond files under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
CONCURRENCY=${CONCURRENCY:-16}
PORT=${PORT:-18124}
OUT=${OUT:-/tmp/friday-profile}
ENGINE=${ENGINE:-}
mkdir -p "$OUT"

if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=./target/release/friday
fi
args=(serve --http-address 127.0.0.1 --http-port "$PORT" --cpus "$SERVER_CPU")
[ -n "$ENGINE" ] && args+=(--engine "$ENGINE")
taskset -c "$SERVER_CPU" "$BIN" "${args[@]}" >"$OUT/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf "127.0.0.1:$PORT/v2/health/ready" >/dev/null && break; sleep 0.1; done

taskset -c "$CLIENT_CPU" ./target/release/friday bench --url "http://127.0.0.1:$PORT" \
  --shape INPUT0:16 --concurrency "$CONCURRENCY" --duration 6s --warmup 1s --cpus "$CLIENT_CPU" \
  --quiet >"$OUT/bench.txt" 2>&1 &
load=$!
sleep 2
perf record -F 1999 --call-graph dwarf,16384 -e cpu-clock -C "$SERVER_CPU" -o "$OUT/perf.data" \
  -- sleep 3 2>/dev/null
wait $load || true
perf script -i "$OUT/perf.data" 2>/dev/null > "$OUT/perf.script"
python3 - "$OUT/perf.script" "$OUT/friday.folded" <<'PY'
# Folds perf script stacks (root first, `;`-joined) so the breakdown needs no extra tool.
import collections, sys
stacks, frames, comm = collections.Counter(), [], None
def flush():
    global frames, comm
    if comm is not None:
        stacks[";".join([comm] + frames[::-1])] += 1
    frames, comm = [], None
for line in open(sys.argv[1], errors="replace"):
    if not line.strip():
        flush()
    elif line[0] not in " \t":
        comm = line.split()[0]
    else:
        parts = line.split(None, 1)
        if len(parts) == 2:
            frames.append(parts[1].rsplit(" (", 1)[0].split("+0x")[0].strip())
flush()
with open(sys.argv[2], "w") as out:
    for s, n in stacks.items():
        out.write(f"{s} {n}\n")
PY
if command -v inferno-flamegraph >/dev/null; then
  inferno-flamegraph --title "friday identity, c=$CONCURRENCY" <"$OUT/friday.folded" >"$OUT/flamegraph.svg"
  echo "flame graph: $OUT/flamegraph.svg"
else
  echo "no flame graph: inferno is not installed (cargo install inferno); folded stacks in $OUT/friday.folded"
fi

python3 - "$OUT/friday.folded" <<'PY'
import collections, sys
# (substring in the stack, label); a sample counts once per layer. Indented layers are part of
# the one above them.
layers = [
    ("friday", "friday's threads (the rest is idle, the kernel's softirqs, other tasks)"),
    ("ShardService::handle", "  service: route, v2 decode, model, v2 encode, statistics"),
    ("decode_infer_request", "    v2 request decode"),
    ("encode_infer_response", "    v2 response encode"),
    ("RequestDecoder::decode", "  HTTP parse"),
    ("recv", "  receive path (recv syscalls or io_uring recv, kernel TCP receive)"),
    ("send", "  send path (send syscalls or io_uring send, kernel TCP send, waking the client)"),
    ("io_uring_enter", "  io_uring_enter (submit + wait, including the work it runs)"),
    ("epoll_wait", "  epoll_wait"),
    ("Reactor", "  glommio reactor (older builds)"),
    ("clock_gettime", "  clock reads"),
    ("swapper", "idle"),
]
total, hits = 0, collections.Counter()
for line in open(sys.argv[1]):
    stack, n = line.rsplit(" ", 1)
    n = int(n)
    total += n
    for key, name in layers:
        if key in stack:
            hits[name] += n
print(f"share of CPU {sys.argv[1]} samples ({total}):")
for _, name in layers:
    print(f"{100 * hits[name] / max(total, 1):6.1f}%  {name}")
PY
grep -E "throughput|latency" "$OUT/bench.txt" || true
