"""Weight-gradient products of the blocks' backward passes, ``dh^T xhat`` over a row block: MKL (``addmm_`` into the
accumulator, as the code does) against oneDNN's ``_linear_pointwise`` in the two orientations it can take them,
one and two threads, GFLOP/s of the median of 31 interleaved calls.

    PYTHONPATH=.:src python benchmarks/results/session29/weight_grad_forms.py   # the command's allocator settings
"""

from __future__ import annotations

import os

import torch

from benchmarks.common import cpu_model, interleaved


def main() -> None:
    cpu, onednn = torch.device("cpu"), torch.ops.mkldnn._linear_pointwise
    print("load", os.getloadavg(), cpu_model())
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for m, n, k in ((8192, 64, 32), (16384, 32, 32), (32768, 32, 16), (32768, 16, 16)):
            dh, xhat, acc = torch.randn(m, n), torch.randn(m, k), torch.zeros(n, k)
            runs = {
                "MKL addmm_": lambda: acc.addmm_(dh.t(), xhat),
                "oneDNN (dh^T) (xhat^T)^T": lambda: onednn(dh.t(), xhat.t(), None, "none", [], ""),
                "oneDNN ((xhat^T) (dh^T)^T)^T": lambda: onednn(xhat.t(), dh.t(), None, "none", [], "").t(),
            }
            t = {key: v.median for key, v in interleaved(runs, 31, cpu).items()}
            rates = ", ".join(f"{key} {2 * m * n * k / v / 1e9:.0f}" for key, v in t.items())
            print(f"{threads} thread(s), ({n} x {m}) @ ({m} x {k}): {rates} GFLOP/s")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
