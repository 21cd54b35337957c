#!/bin/bash
# The 128^3 Swin Factorizer (BraTS preset) and SegResNet, forward and training step, two trees alternating,
# fresh processes, NT threads (default 1), the factorseg command's allocator settings:
#   NT=T bash benchmarks/results/session29/ab_models.sh BEFORE AFTER ROUNDS OUT
before=$1; after=$2; rounds=$3; out=$4
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
for r in $(seq "$rounds"); do
  for tree in "$before" "$after"; do
    PYTHONPATH=$tree/src:$tree "$ROOT/.venv/bin/python" -m benchmarks.models --sizes 128 \
      --models swin_factorizer segresnet --threads "${NT:-1}" --repeats 3 --train-repeats 3 --no-memory \
      --tune-allocator --out "$out/$(basename "$tree")_$r" | grep "128^3" | sed "s|^|$(basename "$tree") round $r |"
  done
done
uptime
