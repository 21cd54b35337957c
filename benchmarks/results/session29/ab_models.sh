#!/bin/bash
# The 128^3 Swin Factorizer (BraTS preset) and SegResNet, forward and training step, two trees alternating,
# fresh processes, NT threads (default 1), the factorseg command's allocator settings:
#   NT=T bash benchmarks/results/session29/ab_models.sh BEFORE AFTER ROUNDS OUT
before=$(realpath "$1"); after=$(realpath "$2"); rounds=$3; out=$(realpath -m "$4")
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
for r in $(seq "$rounds"); do
  for tree in "$before" "$after"; do
    # from the tree itself: `python -m` puts the working directory first on the path
    (cd "$tree" && PYTHONPATH=$tree/src:$tree "$ROOT/.venv/bin/python" -m benchmarks.models --sizes 128 \
      --models swin_factorizer segresnet --threads "${NT:-1}" --repeats 3 --train-repeats 3 --no-memory \
      --tune-allocator --out "$out/$(basename "$tree")_$r") | grep "128^3" | sed "s|^|$(basename "$tree") round $r |"
  done
done
uptime
