"""Row and column sums of a row block (2 MiB of float32 rows per thread, 16 and 32 channels) on one and two threads:
MKL's one-column product (``x @ ones``), oneDNN's (``fastpath.linear``), and PyTorch's ``sum(0)`` over the rows (the
bias gradients' column sums); then a LayerNorm built on each one-column product. Medians of 300 interleaved runs,
the ``factorseg`` command's allocator settings.

    PYTHONPATH=.:src python benchmarks/results/session30/row_sums_threads.py
"""

from __future__ import annotations

import os

import torch

from benchmarks.common import cpu_medians, cpu_model, tune_allocator
from factorseg.models.layers.fastpath import block_rows, linear


def _layer_norm(x: torch.Tensor, row_sum) -> torch.Tensor:  # type: ignore[no-untyped-def]
    centred = x - row_sum(x)
    return centred.mul_(row_sum(centred * centred).add_(1e-5).rsqrt_())


def main() -> None:
    tuned = tune_allocator()
    print("load", os.getloadavg(), cpu_model(), "allocator tuned", tuned)
    table = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for c in (16, 32):
            x = torch.randn(block_rows(c, 4), c)
            column, row = torch.full((c, 1), 1.0 / c), torch.full((1, c), 1.0 / c)

            def mkl(t: torch.Tensor) -> torch.Tensor:
                return t @ column

            def onednn(t: torch.Tensor) -> torch.Tensor:
                return linear(t, row)

            runs = {
                "x @ ones (MKL)": lambda: mkl(x), "linear (oneDNN)": lambda: onednn(x), "sum(0)": lambda: x.sum(0),
                "LayerNorm on MKL": lambda: _layer_norm(x, mkl), "LayerNorm on oneDNN": lambda: _layer_norm(x, onednn),
            }
            table.append((threads, c, x.shape[0], cpu_medians(runs, 300)))
    print("| threads | channels | rows | " + " | ".join(f"{k} (us)" for k in table[0][3]) + " |")
    for threads, c, rows, times in table:
        print(f"| {threads} | {c} | {rows} | " + " | ".join(f"{1e6 * v:.0f}" for v in times.values()) + " |")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
