#!/usr/bin/env bash
# Each landed method's paper-scale config for a few hundred steps on one GPU (bf16 mixed precision): steps/s
# and peak memory per method, under 8 minutes in all. With --cpu: tiny step counts on the CPU (tested).
#   bash benchmarks/gpu_smoke.sh            # on a GPU machine
#   bash benchmarks/gpu_smoke.sh --cpu
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/smoke.py "$@"
