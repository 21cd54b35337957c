"""``X v0`` (the fixed_uv init's first step, ``nmf.solve_gram_form``) on the window path's strided matrices at the
hippocampus recipe's level 2 (4 x 2 x 4 x 175 matrices of 8 x 64, views of a (4, 2, 175, 64, 32) window stack):
``matmul`` against a broadcast product and sum, forward and forward + backward. Medians of 20 alternating calls (ms).

Run from the repository root: python benchmarks/results/session31/times_v0.py. Output: times_v0.txt."""
import os
import sys

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from benchmarks.common import interleaved  # noqa: E402
from factorseg import allocator  # noqa: E402

allocator.tune()
b, s, w, n, c, m = 4, 2, 175, 64, 32, 8
parts = torch.rand(b, s, w, n, c).view(b, s, w, n, c // m, m).permute(0, 1, 4, 2, 5, 3)  # (B, S, H, W, M, N)
v0 = torch.rand(n, 1)
grad = torch.randn(b, s, c // m, w, m, 1)


def with_backward(f):
    def run() -> torch.Tensor:
        p = parts.detach().requires_grad_()
        f(p).backward(grad)
        return p.grad
    return run


def matmul(p: torch.Tensor) -> torch.Tensor:
    return p @ v0


def broadcast(p: torch.Tensor) -> torch.Tensor:
    return (p * v0.mT).sum(-1, keepdim=True)


print("load", os.getloadavg())
for threads in (1, 2):
    torch.set_num_threads(threads)
    t = interleaved({"matmul": lambda: matmul(parts), "broadcast": lambda: broadcast(parts),
                     "matmul + backward": with_backward(matmul), "broadcast + backward": with_backward(broadcast)},
                    20, torch.device("cpu"))
    print(f"{threads} threads: " + ", ".join(f"{k} {v.median * 1e3:.3f}" for k, v in t.items()), flush=True)
torch.testing.assert_close(broadcast(parts), matmul(parts))
torch.testing.assert_close(with_backward(broadcast)(), with_backward(matmul)())
print("load", os.getloadavg())
