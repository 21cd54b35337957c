"""128^3 forward with the cache-sized blocks at 1, 2, 4 and 8 MiB, interleaved in one process.

    PYTHONPATH=. python benchmarks/results/session27/boxsize.py THREADS ROUNDS   (a warm-up round, then ROUNDS - 1 timed)

Since 48036f1 the size is per intra-op thread; `boxsize.txt` was recorded at d87e345, when it was the total.
"""
import sys
from collections.abc import Callable

import torch

from benchmarks.common import build, inputs, interleaved, tune_allocator
from factorseg.models.layers import fastpath

tune_allocator()
torch.set_num_threads(int(sys.argv[1]))
m = build("swin_factorizer", 128).eval()
x, _ = inputs(128, torch.device("cpu"))
def at(mib: int) -> Callable[[], object]:
    def run() -> object:
        fastpath.ROW_BLOCK_BYTES = mib * 2**20
        with torch.inference_mode():
            return m(x)

    return run


timings = interleaved({f"{s} MiB": at(s) for s in (1, 2, 4, 8)}, int(sys.argv[2]) - 1, torch.device("cpu"))
for name, t in timings.items():
    print(f"{name}: median {t.median:.3f} min {t.min:.3f} s")
