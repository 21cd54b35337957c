"""The largest Gram diagonal entry (``nmf.grams_in_range``) at the hippocampus recipe's level-1 shape, 4 x 2 x 2 x 1400
Grams of 8 x 8: ``amax()`` on the strided diagonal view against ``max()`` and a contiguous copy; medians of 30 (ms).

Run from the repository root: python benchmarks/results/session31/diagonal_max.py. Output: diagonal_max.txt."""
import os
import sys

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from benchmarks.common import interleaved  # noqa: E402

g = torch.rand(4, 2, 2, 1400, 8, 8)
print("load", os.getloadavg())
for threads in (1, 2):
    torch.set_num_threads(threads)
    diagonal = lambda: g.diagonal(dim1=-2, dim2=-1)  # noqa: E731
    times = interleaved({"amax()": lambda: diagonal().amax(), "max()": lambda: diagonal().max(),
                         "contiguous().amax()": lambda: diagonal().contiguous().amax()}, 30, torch.device("cpu"))
    print(f"{threads} threads:", ", ".join(f"{k} {v.median * 1e3:.3f} ms" for k, v in times.items()))
assert torch.equal(g.diagonal(dim1=-2, dim2=-1).amax(), g.diagonal(dim1=-2, dim2=-1).max())
