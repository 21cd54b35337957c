"""A dropout keep-mask of 16.8 M elements (p = 0.1) drawn as ``nn.Dropout`` draws it on the CPU (``bernoulli_`` into
a float tensor) and as factorseg's :func:`keep_mask` (a ``bool`` mask), one and two threads, medians of 21, ms.

    PYTHONPATH=. python benchmarks/results/session29/mask_vs_bernoulli.py   # with the factorseg command's allocator settings
"""

from __future__ import annotations

import os

import torch

from benchmarks.common import interleaved
from factorseg.models.layers.dropout import keep_mask


def main() -> None:
    print("load", os.getloadavg())
    cpu, n = torch.device("cpu"), 2**24
    x = torch.empty(n)
    runs = {"bernoulli_": lambda: torch.empty_like(x).bernoulli_(0.9), "keep_mask": lambda: keep_mask((n,), 0.1, cpu)}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        t = {k: 1e3 * v.median for k, v in interleaved(runs, 21, cpu).items()}
        ratio = t["bernoulli_"] / t["keep_mask"]
        print(f"{threads} thread(s): bernoulli_ {t['bernoulli_']:.2f} ms, keep_mask {t['keep_mask']:.2f} ms ({ratio:.1f}x)")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
