"""128^3 forward with the cache-sized blocks at 1, 2, 4 and 8 MiB, interleaved in one process.

    PYTHONPATH=. python benchmarks/results/session27/boxsize.py THREADS ROUNDS
"""
import statistics
import sys
import time

import torch

from benchmarks.common import build, inputs, tune_allocator
from factorseg.models.layers import fastpath

tune_allocator()
torch.set_num_threads(int(sys.argv[1]))
m = build("swin_factorizer", 128).eval()
x, _ = inputs(128, torch.device("cpu"))
sizes = [1, 2, 4, 8]
ts: dict[int, list[float]] = {s: [] for s in sizes}
with torch.inference_mode():
    for _ in range(int(sys.argv[2])):
        for s in sizes:
            fastpath.ROW_BLOCK_BYTES = s * 2**20
            t = time.perf_counter()
            m(x)
            ts[s].append(time.perf_counter() - t)
for s, v in ts.items():
    v = v[1:]
    print(f"{s} MiB: median {statistics.median(v):.3f} min {min(v):.3f} s")
