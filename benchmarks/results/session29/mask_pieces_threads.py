"""NumPy's PCG64DXSM pieces as ``dropout.random_at_least`` draws them (2^20 16-bit numbers a piece, compared into a
bool mask), 16 pieces on the calling thread or on a pool of two, in a quiet process: with ``torch`` as an argument
PyTorch is imported and has run a two-thread product first. Medians of 15, ms.

    PYTHONPATH=.:src python benchmarks/results/session29/mask_pieces_threads.py [torch]
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def main() -> None:
    if sys.argv[1:] == ["torch"]:
        import torch

        torch.set_num_threads(2)
        torch.randn(1000, 1000) @ torch.randn(1000, 1000)
    print("load", os.getloadavg(), "with torch" if sys.argv[1:] == ["torch"] else "without torch")
    per, pieces = 2**20, 16
    out = np.empty(pieces * per, bool)

    def fill(i: int) -> None:
        words = np.random.PCG64DXSM(i).random_raw(per // 4)
        np.greater_equal(words.view(np.int16), 3000, out=out[i * per : (i + 1) * per])

    pool = ThreadPoolExecutor(2)
    for workers in (1, 2):
        times = []
        for _ in range(15):
            start = time.perf_counter()
            if workers == 1:
                for i in range(pieces):
                    fill(i)
            else:
                list(pool.map(fill, range(pieces)))
            times.append(time.perf_counter() - start)
        print(f"{workers} thread(s): {1e3 * sorted(times)[7]:.2f} ms for {pieces * per} numbers")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
