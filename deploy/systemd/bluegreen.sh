#!/usr/bin/env bash
# Blue-green on one host with friday@.service: two colours share one port (http.reuse_port).
#
#   bluegreen.sh status      which colour serves
#   bluegreen.sh switch      start the idle colour, wait until it is ready, smoke-test it, then
#                            drain and stop the live colour
#   bluegreen.sh rollback    the same switch back to the previous colour, whose binary
#                            (/opt/friday/COLOUR/friday) and configuration are still in place
#
# The new colour binds beside the live one and systemd's start returns once it has said READY=1
# (every model loaded and warm, every shard accepting). From then on the kernel spreads new
# connections over both colours' listeners (one per shard), so the smoke requests, each on a new
# connection, reach the new colour in proportion to its shards: half of them with equal shard
# counts. A new colour that answers wrongly fails those, and the switch stops it and leaves the
# live colour serving. Set SMOKE_VERSION when the versions differ: at least one answer must then
# come from the new colour. With few shards on the new side, raise SMOKE_REQUESTS. The live colour then drains: its listeners close (with
# net.ipv4.tcp_migrate_req=1 the connections queued on them move to the new colour), requests in
# flight finish, keep-alive connections close after their answer, and clients reconnect to the
# new colour.
#
# Settings (environment), and the smoke test's (SMOKE_MODEL, SMOKE_BODY, SMOKE_VERSION,
# SMOKE_REQUESTS) in ../smoke.sh:
#   FRIDAY_URL      where friday listens             [http://127.0.0.1:8000]
#   UNIT            the template's name              [friday]
#   SYSTEMCTL       the systemctl to run             [systemctl]
set -euo pipefail
# shellcheck source=deploy/smoke.sh
. "$(dirname "$0")/../smoke.sh"

URL=${FRIDAY_URL:-http://127.0.0.1:8000}
UNIT=${UNIT:-friday}
SYSTEMCTL=${SYSTEMCTL:-systemctl}

say() { echo "bluegreen: $*" >&2; }

active() { "$SYSTEMCTL" is-active --quiet "$UNIT@$1.service"; }

live_colour() {
    local live=()
    for c in blue green; do
        if active "$c"; then live+=("$c"); fi
    done
    case ${#live[@]} in
        1) echo "${live[0]}" ;;
        0) say "neither $UNIT@blue nor $UNIT@green is running: start one with" \
               "'$SYSTEMCTL start $UNIT@blue'"; return 1 ;;
        *) say "both colours are running (a switch in progress or cut short): stop the one" \
               "that should not serve with '$SYSTEMCTL stop $UNIT@COLOUR'"; return 1 ;;
    esac
}

switch() {
    local from to
    from=$(live_colour)
    if [ "$from" = blue ]; then to=green; else to=blue; fi
    say "starting $UNIT@$to beside $UNIT@$from"
    if ! "$SYSTEMCTL" start "$UNIT@$to.service"; then
        say "$UNIT@$to did not start; $UNIT@$from keeps serving"
        "$SYSTEMCTL" stop "$UNIT@$to.service" || true
        "$SYSTEMCTL" reset-failed "$UNIT@$to.service" || true
        return 1
    fi
    if ! smoke "$URL"; then
        say "$UNIT@$to failed the smoke test: stopping it; $UNIT@$from keeps serving"
        "$SYSTEMCTL" stop "$UNIT@$to.service"
        return 1
    fi
    say "draining $UNIT@$from"
    "$SYSTEMCTL" stop "$UNIT@$from.service"
    say "$UNIT@$to serves; roll back with: $0 rollback"
}

case ${1:-} in
    status) c=$(live_colour) && echo "$c" ;;
    switch | rollback) switch ;;
    *) echo "usage: $0 status|switch|rollback" >&2; exit 2 ;;
esac
