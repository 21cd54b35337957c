"""The sub-block boxes' per-shift products at the hippocampus recipe's level-1 box (7840 sub-blocks of 8 voxels x 16
channels, 2 shifts): MKL's batched products against one broadcast product per shift; and, for comparison, the
same batched product with 4 (not 2) as the small size. Medians of 20 alternating calls (ms), tuned allocator.

Run from the repository root: python benchmarks/results/session31/shift_products.py. Output: shift_products.txt."""
import os
import sys

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from benchmarks.common import interleaved  # noqa: E402
from factorseg import allocator  # noqa: E402

allocator.tune()
n, q, s, c = 7840, 8, 2, 16
weights, blocks, grads, d = torch.rand(s, n, q), torch.rand(n, q, c), torch.randn(s, n, c), torch.randn(n, q, c)
out = torch.empty(s, n, c)
t4, r4 = torch.randn(n, q, 4), torch.randn(n, 4, c)


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


print("load", os.getloadavg())
for threads in (1, 2):
    torch.set_num_threads(threads)
    t = interleaved({"sums bmm (2 x 8 @ 8 x 16)": sums_bmm, "sums broadcast": sums_broadcast,
                     "adjoint baddbmm (8 x 2 @ 2 x 16)": adjoint_bmm, "adjoint broadcast": adjoint_broadcast,
                     "bmm 8 x 4 @ 4 x 16": lambda: torch.bmm(t4, r4)}, 20, torch.device("cpu"))
    print(f"{threads} threads: " + ", ".join(f"{k} {v.median * 1e3:.3f}" for k, v in t.items()), flush=True)
torch.testing.assert_close(sums_broadcast(), sums_bmm())
torch.testing.assert_close(adjoint_broadcast(), adjoint_bmm())
print("load", os.getloadavg())
