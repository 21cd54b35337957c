#!/usr/bin/env bash
# Training-step time per voxel with glibc's default allocator (a Python-API user who sets nothing), the layers'
# buffer pool on (no variable set) and off (FACTORSEG_ALLOCATOR=default), one thread, alternating processes.
# Run from the repository root: [MODES="on off"] bash benchmarks/results/session33/pool_scaling.sh OUT [ROUNDS]
set -euo pipefail
out=$1; rounds=${2:-1}
for r in $(seq 1 "$rounds"); do
  for mode in ${MODES:-on off}; do
    uptime
    if [ "$mode" = off ]; then export FACTORSEG_ALLOCATOR=default; else unset FACTORSEG_ALLOCATOR; fi
    python -m benchmarks.scaling --mode train --models swin_factorizer --sizes 64 96 128 160 --repeats 3 \
      --threads 1 --out "$out/pool_${mode}_$r/swin_factorizer"
  done
done
uptime
