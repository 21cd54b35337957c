"""The heads' Gram matrices of a box of sub-blocks (``nmf.head_grams``) in each form its constants select: one
product of all heads, products of 2 heads (strided column views), head by head; heads of 8,
the shapes of the BraTS preset's and the hippocampus recipe's boxes on one and two threads. Medians of 41
interleaved calls, microseconds.

    PYTHONPATH=.:src python benchmarks/results/session32/head_grams.py   # with the factorseg command's allocator settings
"""

from __future__ import annotations

import torch

from benchmarks.common import interleaved, over_threads
from factorseg.models.layers import nmf

FORMS = {  # (HEADS_PER_GRAM_PRODUCT, GRAM_PAIR_ROWS)
    "one product": (10**6, 10**9), "2 heads": (4, 1), "head by head": (0, 10**9),
}


def main() -> None:
    cpu = torch.device("cpu")
    shapes = ((512, 64, 32), (256, 64, 32), (256, 64, 64), (128, 64, 64), (1400, 64, 32), (4096, 8, 32),
              (2048, 8, 32), (2048, 16, 32), (1024, 27, 64), (2048, 8, 64))
    for threads in over_threads():
        for k, q, c in shapes:
            blocks = torch.randn(k, q, c).relu_()

            def grams(form: str) -> torch.Tensor:
                nmf.HEADS_PER_GRAM_PRODUCT, nmf.GRAM_PAIR_ROWS = FORMS[form]
                return nmf.head_grams(blocks, 8)

            forms = list(FORMS)
            for form in forms[1:]:
                torch.testing.assert_close(grams(form), grams(forms[0]))
            t = interleaved({f: (lambda f=f: grams(f)) for f in forms}, 41, cpu)
            cells = ", ".join(f"{f} {1e6 * t[f].median:.0f}" for f in forms)
            print(f"{threads} thread(s), {k} sub-blocks of {q} x {c} ({c // 8} heads): {cells}")


if __name__ == "__main__":
    main()
