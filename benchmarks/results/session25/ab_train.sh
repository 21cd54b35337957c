#!/bin/bash
# Training step (AdamW, deep-supervision Dice-CE, as benchmarks.models) of the BraTS preset at SIZE, one thread,
# tuned allocator, two source trees alternating, each run a fresh process:
# bash benchmarks/results/session25/ab_train.sh BEFORE_TREE AFTER_TREE SIZE ROUNDS STEPS
before=$1; after=$2; size=$3; rounds=$4; steps=$5
for r in $(seq "$rounds"); do
  for tree in "$before" "$after"; do
    PYTHONPATH=$tree/src:$tree python - "$size" "$tree" "$steps" <<'PY'
import statistics, sys, time, torch
from benchmarks.common import build, inputs, train_runner, tune_allocator
tune_allocator(); torch.set_num_threads(1)
size, steps = int(sys.argv[1]), int(sys.argv[3]); torch.manual_seed(0)
m = build("swin_factorizer", size); x, y = inputs(size, torch.device("cpu"))
run = train_runner(m, x, y)
ts = []
for _ in range(steps + 1):
    t0 = time.perf_counter(); run(); ts.append(time.perf_counter() - t0)
ts = ts[1:]
print(f"{sys.argv[2]} {size}^3 train step min {min(ts):.3f} median {statistics.median(ts):.3f} s")
PY
  done
done
uptime
