#!/bin/bash
# Session 30's figures, one after another on an otherwise idle machine, the factorseg command's allocator settings
# (--tune-allocator: the process re-executes itself with them, huge pages included). BEFORE is a worktree of the
# session's start (git worktree add /tmp/wt_f2c f2c272e; linked as /tmp/wt_before for ab_recipe_step.sh).
#   bash benchmarks/results/session30/final_runs.sh BEFORE
set -u
before=$1
ROOT=$(cd "$(dirname "$0")/../../.." && pwd); cd "$ROOT"
R=$ROOT/benchmarks/results; S=$R/session30; PY=$ROOT/.venv/bin/python  # absolute: the A/B scripts change directory
ln -sfn "$before" /tmp/wt_before
for t in 1 2; do
  sfx=$([ $t = 1 ] && echo "" || echo "_2threads")
  echo "== targets 128^3, $t thread(s) $(cat /proc/loadavg)"
  $PY -m benchmarks.models --sizes 128 --models swin_factorizer segresnet --threads $t --repeats 3 --train-repeats 3 \
    --tune-allocator --out $R/targets128_session30_tuned$sfx | grep "^| 128"
  echo "== hippocampus, $t thread(s) $(cat /proc/loadavg)"
  $PY -m benchmarks.recipe_step --recipes hippocampus hippocampus_segresnet --repeats 20 --threads $t --tune-allocator \
    --out $S/recipe_step_${t}thread | grep "^| hipp"
done
echo "== A/B hippocampus, 2 threads $(cat /proc/loadavg)"
bash $R/session24/ab_recipe_step.sh 2 20 3 $S/ab_recipe_step_2threads hippocampus hippocampus_segresnet
echo "== A/B hippocampus, 1 thread $(cat /proc/loadavg)"
bash $R/session24/ab_recipe_step.sh 1 20 2 $S/ab_recipe_step_1thread hippocampus hippocampus_segresnet
echo "== A/B 128^3, 2 threads $(cat /proc/loadavg)"
NT=2 bash $R/session29/ab_models.sh "$before" "$ROOT" 2 $S/ab_models_2threads
echo "== VmHWM, 20 steps, 2 threads $(cat /proc/loadavg)"
mkdir -p $R/vmhwm128_session30
PYTHONPATH=src:. $PY -m benchmarks.memory_child swin_factorizer 128 train --threads 2 --steps 20 --tune-allocator \
  > $R/vmhwm128_session30/tuned_2threads_20steps.json
cat $R/vmhwm128_session30/tuned_2threads_20steps.json; echo
echo "== time per voxel, 1 thread $(cat /proc/loadavg)"
$PY -m benchmarks.scaling --mode forward --models swin_factorizer segresnet --sizes 64 96 128 160 --repeats 3 --threads 1 \
  --tune-allocator --out $R/scaling_session30_tuned | tail -8
$PY -m benchmarks.scaling --mode train --models swin_factorizer --sizes 64 96 128 160 --repeats 3 --threads 1 \
  --tune-allocator --out $R/scaling_train_session30_tuned/swin_factorizer | tail -8
echo "== end $(cat /proc/loadavg)"
