"""The blocks' per-voxel products on one and two threads, GFLOP/s of the median of 41 interleaved calls: the forward
shapes through ``F.linear`` (MKL's sgemm) against ``fastpath.linear`` (oneDNN's); the weight-gradient shapes
``dh^T xhat`` through MKL (``addmm_`` into the accumulator, as the code does) against oneDNN's
``_linear_pointwise`` in the two orientations it can take them; plus a square 2048 sgemm for MKL's peak.

    PYTHONPATH=.:src python benchmarks/results/session29/linear_forms.py   # with the factorseg command's allocator settings
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import cpu_model, interleaved
from factorseg.models.layers.fastpath import linear

CPU = torch.device("cpu")


def rates(runs: dict[str, Callable[[], object]], flops: int) -> str:
    """GFLOP/s of each run's median."""
    return ", ".join(f"{key} {flops / t.median / 1e9:.0f}" for key, t in interleaved(runs, 41, CPU).items())


def main() -> None:
    onednn = torch.ops.mkldnn._linear_pointwise
    print("load", os.getloadavg(), cpu_model(), torch.backends.cpu.get_cpu_capability())
    for threads in (1, 2):
        torch.set_num_threads(threads)
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        square = interleaved({"mm": lambda: a @ b}, 5, CPU)["mm"].median
        print(f"{threads} thread(s): square 2048 sgemm {2 * 2048**3 / square / 1e9:.0f} GFLOP/s")
        for m, k, n in ((8192, 32, 64), (8192, 64, 32), (16384, 32, 32), (32768, 16, 32), (32768, 32, 16)):
            x, w, bias = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
            runs = {"F.linear": lambda: F.linear(x, w, bias), "fastpath.linear": lambda: linear(x, w, bias)}
            print(f"{threads} thread(s): ({m} x {k}) @ ({k} x {n}) + bias: {rates(runs, 2 * m * k * n)} GFLOP/s")
        for m, n, k in ((8192, 64, 32), (16384, 32, 32), (32768, 32, 16), (32768, 16, 16)):
            dh, xhat, acc = torch.randn(m, n), torch.randn(m, k), torch.zeros(n, k)
            runs = {
                "MKL addmm_": lambda: acc.addmm_(dh.t(), xhat),
                "oneDNN (dh^T) (xhat^T)^T": lambda: onednn(dh.t(), xhat.t(), None, "none", [], ""),
                "oneDNN ((xhat^T) (dh^T)^T)^T": lambda: onednn(xhat.t(), dh.t(), None, "none", [], "").t(),
            }
            print(f"{threads} thread(s), weight gradient ({n} x {m}) @ ({m} x {k}): {rates(runs, 2 * m * n * k)} GFLOP/s")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
