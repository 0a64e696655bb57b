# Sourced by the MiniLM benchmarks (bench-minilm.sh, bench-backends.sh) with BIN, PORT and URL
# set: a scratch folder ($tmp, removed on exit with any server left running), a repository in
# $tmp/repo holding paraphrase-MiniLM-L3-v2 as model `minilm`, the onnxruntime wheel for the
# Python baseline, a release build, and `start` / `stop` for a pinned server.
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

model=$(../shared/tools/minilm.sh)
mkdir -p "$tmp/repo/minilm/1"
cp "$model" "$tmp/repo/minilm/1/model.onnx"
python3 -c "import onnxruntime" 2>/dev/null || python3 -m pip install --quiet onnxruntime
cargo build --release --quiet

start() { # start CPUS CONFIG EXTRA…: a server on CPUS, once minilm is ready
  local cpus=$1 config=$2
  shift 2
  taskset -c "$cpus" "$BIN" serve --cpus "$cpus" --http-address 127.0.0.1 --http-port "$PORT" \
    --model-repository "$tmp/repo" --config "$config" "$@" > "$tmp/server.log" 2>&1 &
  server=$!
  for _ in $(seq 600); do
    curl -s -o /dev/null "$URL/v2/models/minilm/ready" && return
    sleep 0.05
  done
  echo "the server did not get ready"; cat "$tmp/server.log"; exit 1
}
stop() { kill -TERM "$server"; wait "$server" 2>/dev/null || true; }
