#!/usr/bin/env bash
# The small-request ceiling, side by side in one run: nginx (one worker, static 200) against friday
# on each engine, `GET /v2/health/ready` and a JSON `identity` infer (16 floats), wrk -t1 -c64.
# Servers on CPU 0, wrk on CPU 1; ROUNDS rounds, alternating servers, medians printed at the end.
#
#   tuning/bench-engines.sh                       # friday from target/release
#   OLD=/path/to/older/friday tuning/bench-engines.sh   # also an older build (A/B)
#
# Needs wrk and nginx (apt-get install wrk nginx-light). Read-only: touches nothing outside a
# temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NEW=${NEW:-target/release/friday}
OLD=${OLD:-}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

cat > "$tmp/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $tmp/nginx.err;
pid $tmp/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $tmp;
  server {
    listen 127.0.0.1:18080 reuseport;
    location / { return 200 "ok"; }
  }
}
EOF
cat > "$tmp/infer.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"FP32","data":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}]}'
wrk.headers["Content-Type"] = "application/json"
EOF

wait_port() {
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.05
  done
  echo "nothing answers on port $1" >&2
  return 1
}

# run NAME PORT PATH [LUA]: one wrk run, appends "NAME req/s" to results.
run() {
  local name=$1 port=$2 path=$3 lua=${4:-}
  local args=(-t1 -c64 -d"$DURATION" --latency)
  [ -n "$lua" ] && args+=(-s "$lua")
  local rps
  rps=$(taskset -c "$LOAD_CPU" wrk "${args[@]}" "http://127.0.0.1:$port$path" |
    awk '/Requests\/sec/ {print $2}')
  echo "$name $rps" >> "$tmp/results"
  printf '  %-40s %10.0f req/s\n' "$name" "$rps"
}

friday() { # friday LABEL BINARY [ARGS…]
  local label=$1 bin=$2
  shift 2
  taskset -c "$SERVER_CPU" "$bin" serve --cpus "$SERVER_CPU" --http-address 127.0.0.1 \
    --http-port 18081 "$@" > "$tmp/$label.log" 2>&1 &
  local pid=$!
  wait_port 18081 || { cat "$tmp/$label.log" >&2; return 1; }
  run "$label health" 18081 /v2/health/ready
  run "$label identity-json" 18081 /v2/models/identity/infer "$tmp/infer.lua"
  kill -TERM $pid
  wait $pid 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
  echo "round $round"
  taskset -c "$SERVER_CPU" nginx -c "$tmp/nginx.conf" &
  npid=$!
  wait_port 18080
  run "nginx static-200" 18080 /
  kill -QUIT $npid
  wait $npid 2>/dev/null || true
  friday "io_uring" "$NEW" --engine io_uring
  friday "epoll" "$NEW" --engine epoll
  if [ -n "$OLD" ]; then
    friday "old" "$OLD"
  fi
done

echo
echo "medians over $ROUNDS rounds (req/s; ratio to nginx's median)"
sort "$tmp/results" | awk '
  { key = $1 " " $2; v[key, ++n[key]] = $3; keys[key] = 1 }
  END {
    for (k in keys) {
      m = n[k]
      for (i = 1; i <= m; i++) a[i] = v[k, i]
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      med[k] = (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
      lo[k] = a[1]; hi[k] = a[m]
    }
    base = med["nginx static-200"]
    for (k in keys) printf "  %-32s %9.0f  (%.0f–%.0f)  %.2f\n", k, med[k], lo[k], hi[k], med[k] / base
  }' | sort
