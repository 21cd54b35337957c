"""One level-0 BraTS block (32 channels, 128^3), training fwd + bwd, with the cache-sized blocks at 2, 4, 8 and 16 MiB,
interleaved in one process.

    PYTHONPATH=. python benchmarks/results/session27/boxsize_train.py THREADS ROUNDS
"""
import statistics
import sys
import time

import torch

from benchmarks.common import build, tune_allocator
from factorseg.models.blocks import FactorizerBlock
from factorseg.models.layers import fastpath

tune_allocator()
torch.set_num_threads(int(sys.argv[1]))
m = build("swin_factorizer", 64)
blk = next(b for b in m.modules() if isinstance(b, FactorizerBlock) and b.mixer.in_proj.in_channels == 32).train()
x = torch.randn(1, 32, 128, 128, 128).movedim(1, -1).contiguous().movedim(-1, 1).requires_grad_()
g = torch.randn(1, 128, 128, 128, 32).movedim(-1, 1)
sizes = [2, 4, 8, 16]
ts: dict[int, list[float]] = {s: [] for s in sizes}
for _ in range(int(sys.argv[2])):
    for s in sizes:
        fastpath.ROW_BLOCK_BYTES = s * 2**20
        t = time.perf_counter()
        blk(x).backward(g)
        ts[s].append(time.perf_counter() - t)
for s, v in ts.items():
    v = v[1:]
    print(f"{s} MiB: median {statistics.median(v):.3f} min {min(v):.3f} s")
