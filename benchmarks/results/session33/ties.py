"""The dropout masks' tie search (``dropout._ties``, bytes equal to the bound's high byte, 1 in 256: ``flatnonzero`` over
every byte) against a search by words first (the words holding any tie, then those words' bytes; the same positions): one 1 M-number piece, then ``random_at_least`` over a hippocampus step's worth of
masks (25 calls of 2.7 M numbers) with either search, on one and two threads; medians in ms, same process.

Run from the repository root, with the command's allocator settings in GLIBC_TUNABLES:
python benchmarks/results/session33/ties.py"""
import os
import sys
import time

sys.path[:0] = ["src", "."]
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import over_threads  # noqa: E402
from factorseg.models.layers import dropout  # noqa: E402

plain = dropout._ties


def new(words: np.ndarray, byte: int, n: int) -> np.ndarray:
    equal = words.view(np.uint8) == byte
    hit = np.flatnonzero(equal.view(np.uint64) != 0)
    at = np.flatnonzero(equal.reshape(-1, 8)[hit])
    positions = hit[at >> 3] * 8 + (at & 7)
    return positions[positions < n] if n < equal.size else positions


assert np.array_equal(new(np.arange(99, dtype=np.uint64), 7, 790), plain(np.arange(99, dtype=np.uint64), 7, 790))


def median_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


print("load", os.getloadavg())
words = np.random.PCG64DXSM(1).random_raw(dropout.NUMBERS_PER_PIECE // 8)
for name, search in (("plain", plain), ("by words", new)):
    print(f"one piece, {name}: {median_ms(lambda: search(words, 25, dropout.NUMBERS_PER_PIECE), 300):.3f} ms")
out = torch.empty(2_700_000, dtype=torch.bool)
for threads in over_threads():
    for name, search in (("plain", plain), ("by words", new), ("plain", plain), ("by words", new)):
        dropout._ties = search
        print(f"{threads} threads, 25 x 2.7 M numbers, {name}: "
              f"{median_ms(lambda: [dropout.random_at_least(out, -26214) for _ in range(25)], 15):.1f} ms")
dropout._ties = plain
