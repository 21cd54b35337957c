"""The BraTS preset's full-resolution products at inference (128^3, 32 channels, one batch item): the decoder fuse's
skip product added in place (``addmm_`` against oneDNN's product per row block, added in place) and the 32 -> 3
segmentation head written channels-first (MKL's ``matmul`` of the whole map against oneDNN's product per row block,
transposed into place). Medians of 7 alternating calls (ms), tuned allocator.

Run from the repository root: python benchmarks/results/session31/fuse_and_head.py. Output: fuse_and_head.txt."""
import os
import sys

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from benchmarks.common import interleaved  # noqa: E402
from factorseg import allocator  # noqa: E402
from factorseg.models.layers.fastpath import block_rows  # noqa: E402

allocator.tune()
dnn = torch.ops.mkldnn._linear_pointwise
v, c = 128**3, 32
rows, skip, w, head = torch.randn(v, c), torch.randn(v, c), torch.randn(c, c), torch.randn(3, c)


def fuse_blocked() -> None:
    n = block_rows(c, 4)
    for dst, src in zip(rows.split(n), skip.split(n)):
        dst.add_(dnn(src, w, None, "none", [], ""))


def head_blocked() -> torch.Tensor:
    out = rows.new_empty(3, v)
    n = block_rows(c, 4)
    for start, block in zip(range(0, v, n), rows.split(n)):
        out[:, start : start + block.shape[0]].copy_(dnn(block, head, None, "none", [], "").t())
    return out


print("load", os.getloadavg())
for threads in (1, 2):
    torch.set_num_threads(threads)
    t = interleaved({"fuse addmm_": lambda: rows.addmm_(skip, w.t()), "fuse oneDNN blocks": fuse_blocked,
                     "head matmul": lambda: torch.matmul(head, rows.t()), "head oneDNN blocks": head_blocked},
                    7, torch.device("cpu"))
    print(f"{threads} threads: " + ", ".join(f"{k} {r.median * 1e3:.1f}" for k, r in t.items()), flush=True)
torch.testing.assert_close(head_blocked(), torch.matmul(head, rows.t()), rtol=1e-4, atol=1e-3)
print("load", os.getloadavg())
