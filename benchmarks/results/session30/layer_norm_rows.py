"""LayerNorm of one row block (2 MiB of float32 rows per thread, as the blocks' kernels cut them): PyTorch's
``native_layer_norm`` with its affine map (and without: a slower path) against ``norm.layer_norm_rows`` (row sums as one-column products; the
affine map is folded into the next product by its callers), 16-256 channels, one and two threads, medians of 300
interleaved runs, the ``factorseg`` command's allocator settings.

    PYTHONPATH=.:src python benchmarks/results/session30/layer_norm_rows.py
"""

from __future__ import annotations

import os

import torch

from benchmarks.common import cpu_medians, cpu_model, tune_allocator
from factorseg.models.layers.fastpath import block_rows
from factorseg.models.layers.norm import layer_norm_rows


def main() -> None:
    tuned = tune_allocator()
    print("load", os.getloadavg(), cpu_model(), "allocator tuned", tuned)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for c in (16, 32, 64, 128, 256):
            x = torch.randn(block_rows(c, 4), c) * 2 + 3
            w, b = torch.randn(c), torch.randn(c)
            runs = {
                "native": lambda: torch.ops.aten.native_layer_norm(x, [c], w, b, 1e-5),
                "native, no affine map": lambda: torch.ops.aten.native_layer_norm(x, [c], None, None, 1e-5),
                "layer_norm_rows": lambda: layer_norm_rows(x, 1e-5),
            }
            t = cpu_medians(runs, 300)
            print(f"threads {threads} channels {c:3d} rows {x.shape[0]:6d}: "
                  + ", ".join(f"{k} {1e6 * v:.0f} us ({t['native'] / v:.2f}x)" for k, v in t.items()))
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
