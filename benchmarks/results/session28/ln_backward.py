"""LayerNorm backward over row blocks on one and two threads: PyTorch's with the parameters' gradients, the input's
gradient alone, and the per-block reductions the parameters' gradients take. Medians of 100 calls, ms.

    PYTHONPATH=. python benchmarks/results/session28/ln_backward.py
"""

from __future__ import annotations

import os

import torch

from benchmarks.common import interleaved


def main() -> None:
    print("load", os.getloadavg())
    for rows, c in ((32768, 32), (16384, 32), (16384, 64), (4096, 128)):
        x, g, w, b = torch.randn(rows, c), torch.randn(rows, c), torch.randn(c), torch.randn(c)
        _, mean, rstd = torch.ops.aten.native_layer_norm(x, [c], w, b, 1e-5)
        xhat = (x - mean) * rstd
        forms = {
            "with parameters": lambda: torch.ops.aten.native_layer_norm_backward(
                g, x, [c], mean, rstd, w, b, [True, True, True]),
            "input only": lambda: torch.ops.aten.native_layer_norm_backward(
                g, x, [c], mean, rstd, w, b, [True, False, False]),
            "sum(g * xhat, 0)": lambda: (g * xhat).sum(0),
            "sum(g, 0)": lambda: g.sum(0),
        }
        medians = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            medians.append({k: 1e3 * t.median for k, t in interleaved(forms, 100, torch.device("cpu")).items()})
        cells = [f"{name}: {medians[0][name]:.3f} / {medians[1][name]:.3f}" for name in forms]
        print(f"{rows} x {c} (1 / 2 threads): " + "; ".join(cells))
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
