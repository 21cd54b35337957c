"""``norm.layer_norm_rows`` with its row means by one-column products (oneDNN's) against PyTorch's reduction
(``ROW_PRODUCT_MAX_CHANNELS`` set either side), over the row blocks the BraTS preset's and the hippocampus recipe's
LayerNorms take; one and two threads. Medians of 101 interleaved calls, microseconds.

    PYTHONPATH=.:src python benchmarks/results/session32/layer_norm_rows.py   # with the factorseg command's allocator settings
"""

from __future__ import annotations

import torch

from benchmarks.common import cpu_medians, over_threads
from factorseg.models.layers import norm


def main() -> None:
    for threads in over_threads():
        for rows, c in ((65536, 16), (16384, 32), (32768, 32), (8192, 64), (16384, 64), (4096, 128), (8192, 128)):
            x = torch.randn(rows, c) * 3 + 1

            def run(limit: int) -> tuple[torch.Tensor, ...]:
                norm.ROW_PRODUCT_MAX_CHANNELS = limit
                return norm.layer_norm_rows(x, 1e-5)

            for a, b in zip(run(10**6), run(0)):
                torch.testing.assert_close(a, b)
            runs = {"product": lambda: run(10**6), "reduction": lambda: run(0)}
            prod, red = (1e6 * t for t in cpu_medians(runs, 101).values())
            print(f"{threads} thread(s), {rows} rows of {c}: products {prod:.0f}, reduction {red:.0f} "
                  f"({red / prod:.2f}x)")


if __name__ == "__main__":
    main()
