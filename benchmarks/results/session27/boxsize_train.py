"""One level-0 BraTS block (32 channels, 128^3), training fwd + bwd, with the cache-sized blocks at 2, 4, 8 and 16 MiB,
interleaved in one process.

    PYTHONPATH=. python benchmarks/results/session27/boxsize_train.py THREADS ROUNDS   (a warm-up round, then ROUNDS - 1 timed)

Since 48036f1 the size is per intra-op thread; `boxsize.txt` was recorded at d87e345, when it was the total.
"""
import sys
from collections.abc import Callable

import torch

from benchmarks.common import build, interleaved, tune_allocator
from factorseg.models.blocks import FactorizerBlock
from factorseg.models.layers import fastpath

tune_allocator()
torch.set_num_threads(int(sys.argv[1]))
m = build("swin_factorizer", 64)
blk = next(b for b in m.modules() if isinstance(b, FactorizerBlock) and b.mixer.in_proj.in_channels == 32).train()
x = torch.randn(1, 32, 128, 128, 128).movedim(1, -1).contiguous().movedim(-1, 1).requires_grad_()
g = torch.randn(1, 128, 128, 128, 32).movedim(-1, 1)
def at(mib: int) -> Callable[[], object]:
    def run() -> object:
        fastpath.ROW_BLOCK_BYTES = mib * 2**20
        blk(x).backward(g)
        return None

    return run


timings = interleaved({f"{s} MiB": at(s) for s in (2, 4, 8, 16)}, int(sys.argv[2]) - 1, torch.device("cpu"))
for name, t in timings.items():
    print(f"{name}: median {t.median:.3f} min {t.min:.3f} s")
