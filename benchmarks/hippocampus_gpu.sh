#!/usr/bin/env bash
# One device run (at most 9 minutes): the hippocampus campaign (docs/results.md) on one GPU, every run at
# once with equal steps (benchmarks/hippocampus_gpu.py). Here first: `bash benchmarks/device.sh fetch`;
# carry .whl and .gpu_data. Results (at most 8 files) go to $OUT, or benchmarks/results/hippocampus_gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] && PY=${PY:-.venv/bin/python} || source benchmarks/device.sh
timeout 540 "$PY" -m benchmarks.hippocampus_gpu --data .gpu_data/hippocampus --out /tmp/hippocampus_gpu \
  --minutes "${MINUTES:-4.5}" --pack "${OUT:-benchmarks/results/hippocampus_gpu}" "$@"
