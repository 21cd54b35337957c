#!/usr/bin/env bash
# One device run (at most 8 minutes): GPU forward / training-step time and peak memory at 128^3 for the
# Factorizer presets vs SegResNet, SwinUNETR (24) and DynUNet, fp32 and bf16-mixed, batch 1 and 2.
# Results: $OUT/gpu/gpu.json on a device machine, else benchmarks/results/gpu/gpu.json (+ the table on stdout). Without a GPU: --device cpu --smoke.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] && PY=${PY:-.venv/bin/python} || source benchmarks/device.sh  # a bare device machine
timeout 470 "$PY" -m benchmarks.gpu --device "${DEVICE:-cuda}" --repeats "${REPEATS:-5}" --out "${OUT:-benchmarks/results}/gpu" "$@"
