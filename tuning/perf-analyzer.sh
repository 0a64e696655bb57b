#!/usr/bin/env bash
# Installs Triton's perf_analyzer (the load generator the Triton world uses for KServe v2 servers)
# from public packages, and runs it.
#
#   tuning/perf-analyzer.sh install          # once; idempotent
#   tuning/perf-analyzer.sh -m identity -u 127.0.0.1:8000 -i http --concurrency-range 1:64:4
#
# Everything goes under $PA_HOME (default: ~/.cache/friday-perf-analyzer). Nothing system-wide
# except two Debian packages (libb64-0d, unzip). perf_analyzer links libcudart even on a CPU-only
# machine; the CUDA runtime wheel provides it, no GPU is needed.
set -euo pipefail
PA_HOME=${PA_HOME:-$HOME/.cache/friday-perf-analyzer}
PY=${PY:-python3}
BIN=$PA_HOME/tritonclient/tritonclient-2.41.0.data/data/bin/perf_analyzer
LIBS=$PA_HOME/cudart/nvidia/cuda_runtime/lib

install() {
  if [ -x "$BIN" ] && [ -d "$LIBS" ]; then return 0; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! dpkg -s libb64-0d unzip >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq libb64-0d unzip >/dev/null
  fi
  mkdir -p "$PA_HOME/wheels"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux1_x86_64 -d "$PA_HOME/wheels" tritonclient==2.41.0
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux2014_x86_64 -d "$PA_HOME/wheels" nvidia-cuda-runtime-cu12==12.9.79
  rm -rf "$PA_HOME/tritonclient" "$PA_HOME/cudart"
  unzip -q -o "$PA_HOME"/wheels/tritonclient-2.41.0-*manylinux1_x86_64.whl \
    'tritonclient-2.41.0.data/data/bin/perf_analyzer' -d "$PA_HOME/tritonclient"
  unzip -q -o "$PA_HOME"/wheels/nvidia_cuda_runtime_cu12-12.9.79-*.whl -d "$PA_HOME/cudart"
  chmod +x "$BIN"
}

if [ "${1:-}" = install ]; then install; echo "perf_analyzer ready: $BIN"; exit 0; fi
install
LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec "$BIN" "$@"
