#!/bin/bash
# One full-resolution BraTS block (32 channels) at SIZE^3, training forward + backward, NT threads (default 1), tuned;
# two trees alternating, fresh processes: ab_block_train.sh BEFORE AFTER SIZE ROUNDS
before=$1; after=$2; size=$3; rounds=$4
for r in $(seq "$rounds"); do
  for tree in "$before" "$after"; do
    PYTHONPATH=$tree/src:$tree python - "$size" "$tree" <<'PY'
import sys, time, statistics, torch
from benchmarks.common import build, tune_allocator
tune_allocator(); torch.set_num_threads(int(__import__("os").environ.get("NT", "1")))
from factorseg.models.blocks import FactorizerBlock
size = int(sys.argv[1]); torch.manual_seed(0)
m = build("swin_factorizer", 64)
blk = next(b for b in m.modules() if isinstance(b, FactorizerBlock) and b.mixer.in_proj.in_channels == 32).train()
x = torch.randn(1, 32, size, size, size).movedim(1, -1).contiguous().movedim(-1, 1).requires_grad_()
g = torch.randn(1, size, size, size, 32).movedim(-1, 1)
ts = []
for _ in range(6):
    t0 = time.perf_counter(); blk(x).backward(g); ts.append(time.perf_counter() - t0)
ts = ts[1:]
print(f"{sys.argv[2]} block {size}^3 train min {min(ts):.3f} median {statistics.median(ts):.3f} s")
PY
  done
done
uptime
