"""Dropout-mask pieces (2^20 numbers, p = 0.1): 16-bit numbers four to a random word, compared (the form before
session 30), against ``dropout.random_at_least``'s high bytes eight to a word with a low byte drawn for ties.
One thread, medians of 300 interleaved runs, then the masks' keep rates.

    PYTHONPATH=.:src python benchmarks/results/session30/mask_bytes.py
"""

from __future__ import annotations

import os

import numpy as np
import torch

from benchmarks.common import cpu_model, interleaved
from factorseg.models.layers.dropout import NUMBERS_PER_PIECE, random_at_least


def main() -> None:
    torch.set_num_threads(1)
    print("load", os.getloadavg(), cpu_model())
    n, bound = NUMBERS_PER_PIECE, round(0.1 * 65536) - 32768
    out = torch.empty(n, dtype=torch.bool)
    flags = out.numpy()

    def sixteen_bits() -> None:
        words = np.random.PCG64DXSM(12345).random_raw(n // 4)
        np.greater_equal(words.view(np.int16), bound, out=flags)

    runs = {"16-bit numbers": sixteen_bits, "bytes (random_at_least)": lambda: random_at_least(out, bound)}
    for name, timing in interleaved(runs, 300, torch.device("cpu")).items():
        print(f"{name}: {1e6 * timing.median:.0f} us a piece")
    torch.manual_seed(0)
    kept = sum(int(random_at_least(out, bound).sum()) for _ in range(20)) / (20 * n)
    print(f"kept {kept:.6f}, expected {1 - (bound + 32768) / 65536:.6f}")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
