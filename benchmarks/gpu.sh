#!/usr/bin/env bash
# One device run (at most 8 minutes): GPU forward / training-step time and peak memory at 128^3 for the
# Factorizer presets vs SegResNet, SwinUNETR (24) and DynUNet, fp32 and bf16-mixed, batch 1 and 2.
# Results: benchmarks/results/gpu/gpu.json (+ the table on stdout). Without a GPU: --device cpu --smoke.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
timeout 470 "$PY" -m benchmarks.gpu --device "${DEVICE:-cuda}" --repeats "${REPEATS:-5}" --out benchmarks/results/gpu "$@"
