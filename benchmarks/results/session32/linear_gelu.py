"""The MLP's first product and its exact GELU (``fastpath.linear_gelu``: the GELU as oneDNN's post-op) against the
product then PyTorch's in-place GELU, over the row blocks the BraTS preset's and the hippocampus recipe's MLPs
take; one and two threads. Medians of 101 interleaved calls, microseconds; the two agree bit for bit.

    PYTHONPATH=.:src python benchmarks/results/session32/linear_gelu.py   # with the factorseg command's allocator settings
"""

from __future__ import annotations

import torch

from benchmarks.common import cpu_medians, over_threads
from factorseg.models.layers import fastpath


def main() -> None:
    for threads in over_threads():
        for rows, c, hidden in ((8192, 32, 64), (16384, 32, 64), (8192, 64, 128), (4096, 128, 256), (32768, 16, 32)):
            x, w, b = torch.randn(rows, c), torch.randn(hidden, c) / c**0.5, torch.randn(hidden)
            runs = {
                "product, then gelu_": lambda: torch.ops.aten.gelu_(fastpath.linear(x, w, b)),
                "post-op": lambda: fastpath.linear_gelu(x, w, b, "none"),
            }
            assert torch.equal(*(run() for run in runs.values()))
            sep, fused = (1e6 * t for t in cpu_medians(runs, 101).values())
            print(f"{threads} thread(s), {rows} rows, {c} -> {hidden}: product then gelu_ {sep:.0f}, "
                  f"post-op {fused:.0f} ({fused / sep:.2f}x)")


if __name__ == "__main__":
    main()
