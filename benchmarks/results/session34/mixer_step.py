"""A block's mixer as the block runs it in training (its LayerNorm, the input as its own residual, channels-last):
median time of a training step (forward + backward) and of a forward pass over 20 calls after 3, for the hippocampus
recipe's first level (4 x 40 x 56 x 40, 16 channels, windows of 4 shifted by 2) and a BraTS-preset level (1 x 64^3,
32 channels, windows of 8 shifted by 4). Run from the repository root or a worktree of another revision, with the
command's allocator settings in GLIBC_TUNABLES: python benchmarks/results/session34/mixer_step.py THREADS [DROPOUT]
(DROPOUT: the rate of the dropout on the mixer's output in the training step, as the block draws it; default 0)."""
import os
import statistics
import sys
import time

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from factorseg.models.layers.dropout import keep_mask_like  # noqa: E402
from factorseg.models.layers.mixer import NMFMixer  # noqa: E402
from factorseg.models.layers.nmf import NMFConfig  # noqa: E402

torch.set_num_threads(int(sys.argv[1]))
p = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
print("load", os.getloadavg(), "threads", sys.argv[1], "dropout", p)
for name, c, window, shape in (("hippocampus level 1", 16, 4, (4, 40, 56, 40)), ("BraTS 64^3 level", 32, 8, (1, 64, 64, 64))):
    torch.manual_seed(0)
    mixer = NMFMixer(c, 3, head_dim=8, window_size=window, shifts=((0, 0, 0), (window // 2,) * 3),
                     nmf=NMFConfig(num_iters=5))
    norm = torch.nn.LayerNorm(c)
    x0 = torch.randn(*shape, c)

    def train() -> None:
        x = (x0 * 1.0).requires_grad_()
        keep = keep_mask_like(x, p) if p > 0 else None
        out = mixer(x, norm=norm, channels_last=True, add_input=True, keep=keep)
        out.backward(torch.ones_like(out))

    def forward() -> None:
        with torch.no_grad():
            mixer(x0, norm=norm, channels_last=True, add_input=True)

    result = []
    for fn in (train, forward):
        times = []
        for rep in range(23):
            start = time.perf_counter()
            fn()
            if rep >= 3:
                times.append(time.perf_counter() - start)
        result.append(statistics.median(times) * 1e3)
    print(f"{name}: training step {result[0]:.2f} ms, forward {result[1]:.2f} ms")
