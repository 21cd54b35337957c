"""Dropout-mask drawing (``dropout.random_at_least``, 11.5 M numbers: the hippocampus recipe's level-1 hidden
layer) on one and two threads, in isolation and right after a PyTorch op (whose OpenMP worker then spins on the
second core): medians and minima of 20 calls (ms).

Run from the repository root: python benchmarks/results/session31/mask_after_op.py. Output: mask_after_op.txt."""
import os
import sys
import time

sys.path[:0] = ["src", "."]
import numpy as np  # noqa: E402
import torch  # noqa: E402

from factorseg.models.layers.dropout import random_at_least  # noqa: E402

out = torch.empty(4 * 89600 * 32, dtype=torch.bool)
x = torch.randn(out.numel())
print("load", os.getloadavg())
for after_op in (False, True):
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for _ in range(3):
            random_at_least(out, 3277)
        times = []
        for _ in range(20):
            if after_op:
                x.mul_(1.0001)
            start = time.perf_counter()
            random_at_least(out, 3277)
            times.append(time.perf_counter() - start)
        print(f"{'after a PyTorch op' if after_op else 'in isolation'}, {threads} threads: median "
              f"{np.median(times) * 1e3:.2f} ms, min {min(times) * 1e3:.2f} ms", flush=True)
