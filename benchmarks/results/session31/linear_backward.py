"""Per-voxel products under autograd: oneDNN (``mkldnn::_linear_pointwise``) against MKL (``mm``) for the forward
product ``x w^T``, the input's gradient ``g w`` and the weight's gradient ``g^T x``, at the hippocampus recipe's
shapes (rows V, in K, out N); and the decoder fuse's ``addmm`` against oneDNN's product plus an in-place sum.
Medians of 15 alternating calls (ms), tuned allocator.

Run from the repository root: python benchmarks/results/session31/linear_backward.py. Output: linear_backward.txt."""
import os
import sys

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from benchmarks.common import interleaved  # noqa: E402
from factorseg import allocator  # noqa: E402

allocator.tune()
dnn = torch.ops.mkldnn._linear_pointwise
print("load", os.getloadavg())
for v, k, n in [(358400, 16, 16), (32768, 16, 32), (44800, 32, 32), (5600, 64, 64), (358400, 3, 16)]:
    x, g, w = torch.randn(v, k), torch.randn(v, n), torch.randn(n, k)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        t = interleaved({
            "forward MKL": lambda: x.mm(w.t()), "forward oneDNN": lambda: dnn(x, w, None, "none", [], ""),
            "input grad MKL": lambda: g.mm(w), "input grad oneDNN": lambda: dnn(g, w.t().contiguous(), None, "none", [], ""),
            "weight grad MKL": lambda: g.t().mm(x), "weight grad oneDNN": lambda: dnn(g.t(), x.t(), None, "none", [], ""),
        }, 15, torch.device("cpu"))
        print(f"V {v}, K {k}, N {n}, {threads} threads: " + ", ".join(f"{name} {r.median * 1e3:.3f}" for name, r in t.items()),
              flush=True)
rows, skip, w = torch.randn(358400, 16), torch.randn(358400, 16), torch.randn(16, 16)
for threads in (1, 2):
    torch.set_num_threads(threads)
    t = interleaved({"addmm": lambda: torch.addmm(rows, skip, w.t()),
                     "oneDNN + add_": lambda: dnn(skip, w, None, "none", [], "").add_(rows)}, 15, torch.device("cpu"))
    print(f"fuse 358400 x 16 -> 16, {threads} threads: " + ", ".join(f"{name} {r.median * 1e3:.3f}" for name, r in t.items()))
print("load", os.getloadavg())
