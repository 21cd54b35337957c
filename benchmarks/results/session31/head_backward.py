"""The hippocampus recipe's full-resolution segmentation head under autograd (4 x 40 x 56 x 40 voxels, 16 -> 3
channels): MKL's whole-map product (PyTorch's autograd through ``matmul``, the previous code) against
``conv._HeadProduct`` (oneDNN's products, MKL's weight gradient), forward + backward. Medians of 20 alternating
calls (ms), tuned allocator.

Run from the root of a worktree of e8def21 (the try; reverted in the next commit, as it gained nothing):
python benchmarks/results/session31/head_backward.py. Output: head_backward.txt."""
import os
import sys

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from benchmarks.common import interleaved  # noqa: E402
from factorseg import allocator  # noqa: E402
from factorseg.models.layers.conv import _HeadProduct  # noqa: E402

allocator.tune()
rows = torch.randn(4, 40 * 56 * 40, 16, requires_grad=True)
w, b = torch.randn(3, 16, requires_grad=True), torch.randn(3, requires_grad=True)
grad = torch.randn(4, 3, 40 * 56 * 40)


def mkl() -> None:
    torch.autograd.backward(torch.matmul(w, rows.transpose(1, 2)).add(b[:, None]), grad)


def onednn() -> None:
    torch.autograd.backward(_HeadProduct.apply(rows, w, b), grad)


print("load", os.getloadavg())
for threads in (1, 2):
    torch.set_num_threads(threads)
    t = interleaved({"matmul (MKL)": mkl, "_HeadProduct (oneDNN)": onednn}, 20, torch.device("cpu"))
    print(f"{threads} threads: " + ", ".join(f"{k} {v.median * 1e3:.2f}" for k, v in t.items()), flush=True)
print("load", os.getloadavg())
