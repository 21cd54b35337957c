"""The blocks' per-voxel products: ``F.linear`` (MKL's sgemm) against ``fastpath.linear`` (oneDNN's), on one and two
threads, GFLOP/s of the median of 41 interleaved calls; plus a square 2048 sgemm for the machine's MKL peak.

    PYTHONPATH=.:src python benchmarks/results/session29/linear_forms.py   # with the factorseg command's allocator settings
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from benchmarks.common import cpu_model, interleaved
from factorseg.models.layers.fastpath import linear


def main() -> None:
    cpu = torch.device("cpu")
    print("load", os.getloadavg(), cpu_model(), torch.backends.cpu.get_cpu_capability())
    for threads in (1, 2):
        torch.set_num_threads(threads)
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        square = interleaved({"mm": lambda: a @ b}, 5, cpu)["mm"].median
        print(f"{threads} thread(s): square 2048 sgemm {2 * 2048**3 / square / 1e9:.0f} GFLOP/s")
        for m, k, n in ((8192, 32, 64), (8192, 64, 32), (16384, 32, 32), (32768, 16, 32), (32768, 32, 16)):
            x, w, bias = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
            runs = {"F.linear": lambda: F.linear(x, w, bias), "fastpath.linear": lambda: linear(x, w, bias)}
            t = {key: v.median for key, v in interleaved(runs, 41, cpu).items()}
            rates = ", ".join(f"{key} {2 * m * k * n / v / 1e9:.0f}" for key, v in t.items())
            print(f"{threads} thread(s): ({m} x {k}) @ ({k} x {n}) + bias: {rates} GFLOP/s")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
