#!/usr/bin/env bash
# Heap allocations per request on the server, counted by valgrind's DHAT: friday (epoll engine:
# valgrind does not emulate io_uring) answers N1 and then N2 sequential keep-alive requests of each
# kind; (blocks(N2) - blocks(N1)) / (N2 - N1) is what one request allocates, startup excluded.
#
#   tuning/alloc-per-request.sh            # health, JSON identity, binary identity
# Needs valgrind (apt-get install valgrind) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/friday}
N1=${N1:-1000}
N2=${N2:-3000}
PORT=18097
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

blocks() { # blocks KIND N
  valgrind --tool=dhat --dhat-out-file=/dev/null "$BIN" serve --cpus 0 --http-address 127.0.0.1 \
    --http-port $PORT --engine epoll > "$tmp/log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/v2/health/live" && break
    sleep 0.2
  done
  python3 tuning/requests.py $PORT "$2" "$1" > /dev/null
  kill -INT $pid
  wait $pid || true
  sed -n 's/.*Total:.* in \([0-9,]*\) blocks.*/\1/p' "$tmp/log" | head -1 | tr -d ,
}

for kind in health json binary; do
  a=$(blocks $kind "$N1")
  b=$(blocks $kind "$N2")
  python3 -c "print(f'  {\"$kind\":<8} {($b - $a) / ($N2 - $N1):.3f} allocations per request')"
done
