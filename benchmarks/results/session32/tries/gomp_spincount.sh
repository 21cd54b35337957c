#!/bin/bash
# The hippocampus step, both models interleaved, two threads, per OpenMP spin setting, fresh processes, three rounds
# alternating the settings: bash benchmarks/results/session32/tries/gomp_spincount.sh [OUT] (default /tmp/spin2)
ROOT=$(cd "$(dirname "$0")/../../../.." && pwd); T=${1:-/tmp/spin2}; mkdir -p "$T"
for r in 1 2 3; do
 for s in default 3000 10000 30000 100000 passive; do
  case $s in default) E="";; passive) E="OMP_WAIT_POLICY=PASSIVE";; *) E="GOMP_SPINCOUNT=$s";; esac
  (cd /tmp && env $E PYTHONPATH=$ROOT/src:$ROOT "$ROOT/.venv/bin/python" -m benchmarks.recipe_step --recipes hippocampus \
    hippocampus_segresnet --repeats 12 --threads 2 --tune-allocator --out "$T/${s}_$r") 2>&1 | grep "^| hipp" | sed "s/^/$s $r /"
 done
done
uptime
