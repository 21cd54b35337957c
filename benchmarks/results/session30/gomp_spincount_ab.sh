#!/bin/bash
# The hippocampus recipe step (20 interleaved steps a run) under libgomp spin counts (GOMP_SPINCOUNT unset, or each
# value given), fresh processes alternating, T threads, this checkout, the factorseg command's allocator settings.
#   bash benchmarks/results/session30/gomp_spincount_ab.sh T ROUNDS OUT default 30000 100000
T=$1; N=$2; O=$(realpath -m "$3"); shift 3
ROOT=$(cd "$(dirname "$0")/../../.." && pwd); cd "$ROOT"
for i in $(seq 1 "$N"); do
  for s in "$@"; do
    if [ "$s" = default ]; then unset GOMP_SPINCOUNT; else export GOMP_SPINCOUNT=$s; fi
    .venv/bin/python -m benchmarks.recipe_step --recipes hippocampus hippocampus_segresnet --repeats 20 --threads "$T" \
      --tune-allocator --out "$O/spin${s}_$i" | grep "^| hipp" | sed "s/^/spin=$s $i /"
  done
done
uptime
