"""Whether the NumPy steps of ``dropout.random_at_least`` run side by side on two threads: 200 calls of each step on
one 1 M-number piece on one thread, then 200 calls on each of two threads (separate pieces) at once; equal times
mean the two threads did not wait for each other (the GIL released).

    python benchmarks/results/session32/numpy_side_by_side.py   # output: numpy_side_by_side.txt
"""
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

pieces = [np.random.default_rng(i).integers(0, 256, 2**20).astype(np.uint8) for i in range(2)]
steps = {
    "random_raw (131,072 words)": lambda top: np.random.PCG64DXSM(1).random_raw(131072),
    "greater": lambda top: np.greater(top, 25),
    "flatnonzero(top == 25)": lambda top: np.flatnonzero(top == 25),
}
pool = ThreadPoolExecutor(2)
print("load", os.getloadavg())
for name, step in steps.items():
    def calls(i: int, step=step) -> None:
        for _ in range(200):
            step(pieces[i])

    start = time.perf_counter()
    calls(0)
    one = time.perf_counter() - start
    start = time.perf_counter()
    list(pool.map(calls, [0, 1]))
    two = time.perf_counter() - start
    print(f"{name}: one thread 200 calls {one * 1e3:.0f} ms; two threads 2 x 200 calls {two * 1e3:.0f} ms "
          f"({two / one:.2f}x for twice the work)")
print("load", os.getloadavg())
