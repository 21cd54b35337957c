#!/bin/bash
# Forward (inference) of the BraTS preset at SIZE, one thread, tuned allocator, two source trees alternating,
# each run a fresh process: bash benchmarks/results/session25/ab_forward.sh BEFORE_TREE AFTER_TREE SIZE ROUNDS
before=$1; after=$2; size=$3; rounds=$4
for r in $(seq "$rounds"); do
  for tree in "$before" "$after"; do
    PYTHONPATH=$tree/src:$tree python - "$size" "$tree" <<'PY'
import sys, time, torch
from benchmarks.common import build, inputs, tune_allocator
tune_allocator(); torch.set_num_threads(1)
size = int(sys.argv[1]); torch.manual_seed(0)
m = build("swin_factorizer", size).eval(); x, _ = inputs(size, torch.device("cpu"))
ts = []
with torch.inference_mode():
    for _ in range(5):
        t0 = time.perf_counter(); m(x); ts.append(time.perf_counter() - t0)
ts = sorted(ts[1:])
print(f"{sys.argv[2]} {size}^3 forward min {ts[0]:.3f} median {(ts[1] + ts[2]) / 2:.3f} s")
PY
  done
done
uptime
