"""The heads' Gram matrices of a box of sub-blocks (``nmf.head_grams``, as the sub-block boxes call it): one ``C x C`` product per
sub-block against the heads' columns copied apart and multiplied head by head; the box sizes the BraTS preset's
levels take at 128^3 on one thread (heads of 8). Medians of 31 interleaved calls, ms.

    PYTHONPATH=.:src python benchmarks/results/session29/head_grams.py   # with the factorseg command's allocator settings
"""

from __future__ import annotations

import os

import torch

from benchmarks.common import cpu_model, interleaved
from factorseg.models.layers import nmf


def main() -> None:
    cpu = torch.device("cpu")
    print("load", os.getloadavg(), cpu_model())
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for k, q, c in ((256, 64, 32), (128, 64, 64), (64, 64, 128)):
            blocks = torch.randn(k, q, c).relu_()

            def grams(limit: int) -> torch.Tensor:
                nmf.HEADS_PER_GRAM_PRODUCT = limit
                return nmf.head_grams(blocks, 8)

            torch.testing.assert_close(grams(10**6), grams(0))
            t = interleaved({"one product": lambda: grams(10**6), "head by head": lambda: grams(0)}, 31, cpu)
            one, split = (1e3 * t[key].median for key in ("one product", "head by head"))
            print(f"{threads} thread(s), {k} sub-blocks of {q} x {c} ({c // 8} heads): one product {one:.3f} ms, "
                  f"head by head {split:.3f} ms ({split / one:.2f}x)")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
