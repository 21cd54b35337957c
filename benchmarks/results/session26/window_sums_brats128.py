"""``window_sums`` of the BraTS preset's full-resolution Gram blocks at 128^3 (``(1, 4, 32768, 8, 8)``,
windows of 8 shifted by 4): the CPU's ``index_add_`` form against the gather-and-sum form (the one the
GPU keeps, forced here), inputs read from memory (a 64 MiB buffer written between calls), tuned allocator.

    python benchmarks/results/session26/window_sums_brats128.py THREADS
"""

import sys
import time

import torch

from factorseg import allocator
from factorseg.models.layers import windows

allocator.tune()
torch.set_num_threads(int(sys.argv[1]))
lay = windows.WindowMatricize(3, 8, 8, [0, 4]).layout((128, 128, 128))
edges = windows.subblock_edges(lay)
u = torch.randn(1, 4, 32768, 8, 8)
flush = torch.empty(64 << 20, dtype=torch.uint8)
index_add_form = windows._dim0_kernels


def timed(fast: bool) -> tuple[float, float]:
    windows._dim0_kernels = index_add_form if fast else (lambda *tensors: False)
    try:
        times = []
        for _ in range(15):
            flush.fill_(1)
            start = time.perf_counter()
            windows.window_sums(u, lay, edges, dim=2)
            times.append(time.perf_counter() - start)
    finally:
        windows._dim0_kernels = index_add_form
    times.sort()
    return times[0] * 1e3, times[7] * 1e3


for fast in (False, True, False, True):
    low, mid = timed(fast)
    print(f"{'index_add_' if fast else 'gather + sum':12s} min {low:6.2f} ms  median {mid:6.2f} ms")
