#!/usr/bin/env bash
# Blue-green on Kubernetes with deploy/kubernetes/bluegreen.yaml.
#
#   bluegreen.sh status      which colour the Service sends to
#   bluegreen.sh switch      wait for the idle colour's rollout, smoke-test it through a
#                            port-forward (it takes no traffic yet), then point the Service at it
#   bluegreen.sh rollback    the same switch back: the old colour still runs
#
# Settings (environment), and the smoke test's (SMOKE_MODEL, SMOKE_BODY, SMOKE_VERSION,
# SMOKE_REQUESTS) in ../smoke.sh:
#   SERVICE      the Service                              [friday]
#   LOCAL_PORT   the port-forward's local port            [18000]
#   KUBECTL      the kubectl to run, with any --namespace [kubectl]
set -euo pipefail
# shellcheck source=deploy/smoke.sh
. "$(dirname "$0")/../smoke.sh"

SERVICE=${SERVICE:-friday}
LOCAL_PORT=${LOCAL_PORT:-18000}
read -r -a KUBECTL <<<"${KUBECTL:-kubectl}"

say() { echo "bluegreen: $*" >&2; }

live_colour() {
    "${KUBECTL[@]}" get service "$SERVICE" -o 'jsonpath={.spec.selector.slot}'
}

switch() {
    local from to forward passed i
    from=$(live_colour) || { say "cannot read service/$SERVICE's selector"; return 1; }
    case $from in
        blue) to=green ;;
        green) to=blue ;;
        *) say "service/$SERVICE selects slot '$from', not blue or green"; return 1 ;;
    esac
    say "waiting for deployment/$SERVICE-$to to be ready"
    if ! "${KUBECTL[@]}" rollout status "deployment/$SERVICE-$to" --timeout=300s; then
        say "deployment/$SERVICE-$to is not ready; service/$SERVICE stays on $from"
        return 1
    fi
    # The new colour takes no traffic yet: ask it through a port-forward to its pods. Whatever
    # answers must be that port-forward, not something already on the port.
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$LOCAL_PORT/"; then
        say "something already listens on 127.0.0.1:$LOCAL_PORT: set LOCAL_PORT to a free port"
        return 1
    fi
    "${KUBECTL[@]}" port-forward "deployment/$SERVICE-$to" "$LOCAL_PORT:http" >/dev/null &
    forward=$!
    passed=0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$forward" 2>/dev/null || break
        if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$LOCAL_PORT/v2/health/live"; then
            smoke "http://127.0.0.1:$LOCAL_PORT" && kill -0 "$forward" 2>/dev/null && passed=1
            break
        fi
        sleep 0.1
    done
    kill "$forward" 2>/dev/null || true
    wait "$forward" 2>/dev/null || true
    if [ "$passed" != 1 ]; then
        say "deployment/$SERVICE-$to failed the smoke test; service/$SERVICE stays on $from"
        return 1
    fi
    "${KUBECTL[@]}" patch service "$SERVICE" --type merge \
        -p "{\"spec\":{\"selector\":{\"slot\":\"$to\"}}}"
    say "service/$SERVICE sends to $to; $from still runs: roll back with '$0 rollback', or" \
        "scale it down with '${KUBECTL[*]} scale deployment/$SERVICE-$from --replicas=0'"
}

case ${1:-} in
    status) live_colour && echo ;;
    switch | rollback) switch ;;
    *) echo "usage: $0 status|switch|rollback" >&2; exit 2 ;;
esac
