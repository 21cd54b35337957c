"""Weight gradients over voxels, ``out += a^T b`` summed over rows: MKL's ``addmm_`` against
``fastpath.add_row_products_`` (one chunk of rows per thread, one batched product, then the sum), at the shapes
of the hippocampus recipe's and the BraTS preset's products; one and two threads. Medians of 31 interleaved
calls, microseconds.

    PYTHONPATH=.:src python benchmarks/results/session32/row_products.py   # with the factorseg command's allocator settings
"""

from __future__ import annotations

import torch

from benchmarks.common import cpu_medians, over_threads
from factorseg.models.layers import fastpath

SHAPES = (  # (M, rows, N): out (M, N)
    (16, 358400, 16), (3, 358400, 16), (16, 32768, 32), (32, 32768, 16), (16, 26880, 16), (32, 44800, 32),
    (64, 16384, 32), (32, 16384, 64), (32, 32768, 32), (3, 2097152, 32),
)


def main() -> None:
    for threads in over_threads():
        for m, v, n in SHAPES:
            a, b, out = torch.randn(v, m), torch.randn(v, n), torch.zeros(m, n)
            runs = {"addmm_": lambda: out.addmm_(a.t(), b), "chunks": lambda: fastpath.add_row_products_(out, a, b)}
            exact = a.double().t() @ b.double()  # no less accurate than MKL's float32 product
            chunked = fastpath.add_row_products_(out, a, b)
            errors = [(t.double() - exact).abs().max().item() for t in (a.t() @ b, chunked)]
            assert errors[1] <= 2 * errors[0] + 1e-4, errors
            out.zero_()
            mm, chunks = (1e6 * t for t in cpu_medians(runs, 31).values())
            print(f"{threads} thread(s), ({m}, {v}) x ({v}, {n}): addmm_ {mm:.0f}, chunks {chunks:.0f} "
                  f"({chunks / mm:.2f}x); largest errors against float64 {errors[0]:.1e} / {errors[1]:.1e}")


if __name__ == "__main__":
    main()
