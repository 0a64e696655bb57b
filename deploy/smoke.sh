# shellcheck shell=bash
# A smoke test of a friday before it takes traffic, for the blue-green scripts (sourced, not run).
#
#   smoke URL   SMOKE_REQUESTS requests, each on a new connection, must all answer 200; with
#               SMOKE_VERSION, at least one answer must come from that version of SMOKE_MODEL.
#
# Settings (environment):
#   SMOKE_MODEL     a model to ask (unset: server readiness only)
#   SMOKE_BODY      a file with a v2 inference request for SMOKE_MODEL (JSON); unset: the
#                   model's readiness only
#   SMOKE_VERSION   the version that must answer
#   SMOKE_REQUESTS  how many requests                                   [20]

# One request on a new connection; prints the body, a newline and the HTTP status.
smoke_once() {
    local url=$1
    if [ -n "${SMOKE_MODEL:-}" ] && [ -n "${SMOKE_BODY:-}" ]; then
        curl -sS --max-time 10 -H 'Content-Type: application/json' \
            --data-binary @"$SMOKE_BODY" -w '\n%{http_code}' \
            "$url/v2/models/$SMOKE_MODEL/infer"
    elif [ -n "${SMOKE_MODEL:-}" ]; then
        curl -sS --max-time 10 -w '\n%{http_code}' "$url/v2/models/$SMOKE_MODEL/ready"
    else
        curl -sS --max-time 10 -w '\n%{http_code}' "$url/v2/health/ready"
    fi
}

smoke() {
    local url=$1 requests=${SMOKE_REQUESTS:-20} i out status body from_version=0
    for ((i = 0; i < requests; i++)); do
        out=$(smoke_once "$url" 2>&1) || { echo "smoke request $i failed: $out" >&2; return 1; }
        status=${out##*$'\n'}
        body=${out%$'\n'*}
        if [ "$status" != 200 ]; then
            echo "smoke request $i answered $status: $body" >&2
            return 1
        fi
        if [ -n "${SMOKE_VERSION:-}" ] &&
            grep -q "\"model_version\":\"$SMOKE_VERSION\"" <<<"$body"; then
            from_version=$((from_version + 1))
        fi
    done
    if [ -n "${SMOKE_VERSION:-}" ] && [ "$from_version" = 0 ]; then
        echo "no smoke answer came from version $SMOKE_VERSION" >&2
        return 1
    fi
    echo "smoke: $requests requests answered 200${SMOKE_VERSION:+ ($from_version from version $SMOKE_VERSION)}" >&2
}
