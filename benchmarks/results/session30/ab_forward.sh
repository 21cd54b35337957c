#!/bin/bash
# The 128^3 forward pass only (Swin Factorizer, BraTS preset, against SegResNet), two trees alternating, fresh
# processes, T threads, the factorseg command's allocator settings, 5 repeats a run. Used for the LayerNorm change:
# BEFORE a worktree of 2a4feae (git worktree add /tmp/wt_thp 2a4feae), AFTER 6d7e147.
#   bash benchmarks/results/session30/ab_forward.sh BEFORE AFTER ROUNDS OUT T
before=$(realpath "$1"); after=$(realpath "$2"); rounds=$3; out=$(realpath -m "$4"); T=$5
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
for r in $(seq "$rounds"); do
  for tree in "$before" "$after"; do
    (cd "$tree" && PYTHONPATH=$tree/src:$tree "$ROOT/.venv/bin/python" -m benchmarks.models --sizes 128 \
      --models swin_factorizer segresnet --threads "$T" --repeats 5 --no-train --no-memory \
      --tune-allocator --out "$out/$(basename "$tree")_$r") | grep "| 128^3" | sed "s|^|$(basename "$tree") round $r |"
  done
done
uptime
