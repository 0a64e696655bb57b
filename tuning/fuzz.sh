#!/usr/bin/env bash
# Fuzzes friday's decoders with cargo fuzz (libFuzzer; needs the nightly toolchain, and installs
# cargo-fuzz from crates.io if it is missing) for SECONDS each (default 120): the HTTP/1.1
# request decoder fed in pieces with chunked bodies (http_decoder), the v2 infer request decoder
# for JSON, binary-extension and raw bodies (infer_request), and JSON tensor data both ways
# (json_data). Each starts from seeds shaped like the inputs of the test suite (written to
# tuning/fuzz/corpus/<target>/ on the first run; the corpus then keeps what the fuzzer finds).
# Prints executions and findings per target; a crash leaves its input under
# tuning/fuzz/artifacts/<target>/ and makes the script exit 1. Not part of CI.
#
#   tuning/fuzz.sh
#   SECONDS_EACH=600 TARGETS=http_decoder tuning/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/fuzz"

SECONDS_EACH=${SECONDS_EACH:-120}
TARGETS=${TARGETS:-http_decoder infer_request json_data}
command -v cargo-fuzz > /dev/null || cargo install cargo-fuzz --locked

seed() { # seed TARGET NAME BYTES (printf format)
  mkdir -p "corpus/$1"
  # shellcheck disable=SC2059
  printf "$3" > "corpus/$1/$2"
}

if [ ! -d corpus ]; then
  # http_decoder: first byte = piece size; then requests as the tests send them.
  seed http_decoder get '\x07GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n'
  seed http_decoder pipelined '\x03GET /v2 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /v2/models/identity HTTP/1.1\r\n\r\nGET /metrics HTTP/1.0\r\n\r\n'
  seed http_decoder post '\x10POST /v2/models/identity/infer HTTP/1.1\r\nContent-Length: 13\r\nContent-Type: application/json\r\n\r\n{"inputs":[]}'
  seed http_decoder chunked '\x05POST /v2/models/identity/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\n{"inp\r\n8\r\nuts":[]}\r\n0\r\nTrailer: x\r\n\r\n'
  seed http_decoder chunked_and_length '\x09POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n1\r\na\r\n0\r\n\r\n'
  seed http_decoder continue '\x20POST /v2/models/identity/infer HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}'
  seed http_decoder http10_te '\x01POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'
  seed http_decoder binary '\x40POST /v2/models/identity/infer HTTP/1.1\r\nInference-Header-Content-Length: 2\r\nContent-Length: 6\r\n\r\n{}\x00\x00\x80\x3f'
  # infer_request: first byte = model (low nibble) and Inference-Header-Content-Length (high).
  seed infer_request identity_json '\x00{"id":"a","inputs":[{"name":"INPUT0","shape":[1,4],"datatype":"FP32","data":[1,2.5,-3,4e3]}],"outputs":[{"name":"OUTPUT0","parameters":{"binary_data":true}}]}'
  seed infer_request identity_nested '\x00{"inputs":[{"name":"INPUT0","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}],"parameters":{"priority":1,"timeout":1000,"binary_data_output":true}}'
  seed infer_request simple_json '\x01{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"INT32","data":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]},{"name":"INPUT1","shape":[1,16],"datatype":"INT32","data":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]}'
  seed infer_request identity_binary '\xa0{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}\x00\x00\x80\x3f'
  seed infer_request raw '\x90\x00\x00\x80\x3f\x00\x00\x00\x40'
  seed infer_request non_finite '\x00{"inputs":[{"name":"INPUT0","shape":[1,3],"datatype":"FP32","data":[NaN, -Infinity,Inf]}]}'
  seed infer_request bad_json '\x00{"inputs":[{"name":"INPUT0","shape":[1,2],"datatype":"FP32","data":[1e300,2]}]}'
  # json_data: first byte = datatype (0 BOOL .. 11 FP32, 12 FP64, 13 BYTES).
  seed json_data fp32 '\x0b[1.5,-2,3e-7,[4,5]]'
  seed json_data int64 '\x08[-9223372036854775808,9223372036854775807,0]'
  seed json_data uint8 '\x01[0,255,[1,[2]]]'
  seed json_data fp16 '\x09[65504,-0.0,1e-7]'
  seed json_data bool '\x00[true,false,[true]]'
  seed json_data bytes '\x0d["a","\\u00e9",""]'
fi

failed=0
for target in $TARGETS; do
  mkdir -p "artifacts/$target"
  log=$(mktemp)
  if cargo +nightly fuzz run --fuzz-dir . "$target" "corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -artifact_prefix="artifacts/$target/" -print_final_stats=1 \
    > "$log" 2>&1; then
    result="no findings"
  else
    result="FINDING: $(ls -t "artifacts/$target" | head -1) (see $log)"
    failed=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cover=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  corpus=$(ls "corpus/$target" | wc -l)
  printf '%-14s %12s executions in %ss, %s, corpus %s inputs: %s\n' \
    "$target" "$runs" "$SECONDS_EACH" "${cover:-cov: ?}" "$corpus" "$result"
  [ "$failed" = 1 ] || rm -f "$log"
done
exit $failed
