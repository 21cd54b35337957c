#!/bin/bash
# ISLES'22 recipe step (DWI + ADC: 2 input channels, 64^3 crops, batch 2), before (BEFORE_TREE) and after (this
# checkout) alternating, fresh processes, tuned allocator, one thread:
# bash benchmarks/results/session25/ab_isles_step.sh BEFORE_TREE REPEATS ROUNDS OUTDIR
B=$1; R=$2; N=$3; O=$4
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
for i in $(seq 1 "$N"); do
  for v in before after; do
    if [ $v = before ]; then PP=$B/src:$B; else PP=$ROOT/src:$ROOT; fi
    (cd /tmp && PYTHONPATH=$PP "$ROOT/.venv/bin/python" -m benchmarks.recipe_step --recipes isles22 --in-channels 2 \
      --out-channels 2 --repeats "$R" --threads 1 --tune-allocator --out "$O/${v}_$i") 2>&1 | grep "^| isles" | sed "s/^/$v $i /"
  done
done
uptime
