#!/bin/bash
# Hippocampus recipe step, before (a worktree of the session's start at /tmp/wt_before: git worktree add /tmp/wt_before 7a76c96)
# and after (this checkout) alternating, each a fresh process: benchmarks/recipe_step.py, tuned allocator.
# usage: bash benchmarks/results/session24/ab_recipe_step.sh THREADS REPEATS ROUNDS OUTDIR RECIPE...
T=$1; R=$2; N=$3; O=$4; shift 4
ROOT=$(cd "$(dirname "$0")/../../.." && pwd); cd "$ROOT"
for i in $(seq 1 $N); do
  for v in before after; do
    if [ $v = before ]; then PP=/tmp/wt_before/src:/tmp/wt_before; else PP=$ROOT/src:$ROOT; fi
    (cd /tmp && PYTHONPATH=$PP $ROOT/.venv/bin/python -m benchmarks.recipe_step --recipes "$@" --repeats $R --threads $T --tune-allocator --out $O/${v}_$i) 2>&1 | grep "^| hipp"| sed "s/^/$v $i /"
  done
done
uptime
