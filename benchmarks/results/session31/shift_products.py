"""The sub-block boxes' per-shift products (2 shifts): MKL's batched products against one broadcast product per
shift, for n sub-blocks of Q voxels x C channels: the hippocampus recipe's (Q 8, C 16), the BraTS preset's (Q 64,
C 32) and shapes between. Medians of 20 alternating calls (ms), tuned allocator.

Run from the repository root: python benchmarks/results/session31/shift_products.py. Output: shift_products.txt."""
import os
import sys

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from benchmarks.common import interleaved  # noqa: E402
from factorseg import allocator  # noqa: E402

allocator.tune()
print("load", os.getloadavg())
for n, q, c in [(7840, 8, 16), (3360, 8, 16), (8192, 4, 16), (4096, 8, 32), (2048, 8, 64), (4096, 16, 16),
                (1024, 27, 32), (512, 64, 32), (256, 64, 64)]:
    s = 2
    weights, blocks, grads, d = torch.rand(s, n, q), torch.rand(n, q, c), torch.randn(s, n, c), torch.randn(n, q, c)
    out = torch.empty(s, n, c)

    def sums_bmm() -> torch.Tensor:
        return torch.bmm(weights.transpose(0, 1), blocks).transpose(0, 1)

    def sums_broadcast() -> torch.Tensor:
        for shift in range(s):
            torch.sum(blocks * weights[shift].unsqueeze(-1), dim=1, out=out[shift])
        return out

    def adjoint_bmm() -> torch.Tensor:
        return torch.baddbmm(d, weights.permute(1, 2, 0), grads.transpose(0, 1))

    def adjoint_broadcast() -> torch.Tensor:
        e = torch.addcmul(d, weights[0].unsqueeze(-1), grads[0].unsqueeze(1))
        for shift in range(1, s):
            e.addcmul_(weights[shift].unsqueeze(-1), grads[shift].unsqueeze(1))
        return e

    for threads in (1, 2):
        torch.set_num_threads(threads)
        t = interleaved({"sums bmm": sums_bmm, "sums broadcast": sums_broadcast, "adjoint baddbmm": adjoint_bmm,
                         "adjoint broadcast": adjoint_broadcast}, 20, torch.device("cpu"))
        print(f"n {n}, Q {q}, C {c}, {threads} threads: " + ", ".join(f"{k} {v.median * 1e3:.3f}" for k, v in t.items()),
              flush=True)
    torch.testing.assert_close(sums_broadcast(), sums_bmm())
    torch.testing.assert_close(adjoint_broadcast(), adjoint_bmm())
print("load", os.getloadavg())
