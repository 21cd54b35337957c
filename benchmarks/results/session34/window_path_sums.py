"""A window-path mixer at the hippocampus recipe's second level (4 x 20 x 28 x 20, 32 channels, heads of 8, windows of
4 shifted by 2, 5 iterations), forward and backward with the block's residual: the out-of-place sums (``aten::add``,
by ``torch.profiler``) in the backward pass, and the median step time over 60 steps.

Run from the repository root (or a worktree of another revision), with the command's allocator settings in
GLIBC_TUNABLES: python benchmarks/results/session34/window_path_sums.py [THREADS]"""
import os
import statistics
import sys
import time

sys.path[:0] = ["src", "."]
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from factorseg.models.layers.mixer import NMFMixer  # noqa: E402
from factorseg.models.layers.nmf import NMFConfig  # noqa: E402

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
torch.manual_seed(0)
mixer = NMFMixer(32, 3, head_dim=8, window_size=4, shifts=((0, 0, 0), (2, 2, 2)), nmf=NMFConfig(num_iters=5))
x0 = torch.randn(4, 20, 28, 20, 32)


def step() -> None:
    x = (x0 * 1.0).requires_grad_()
    mixer(x * 1.0, channels_last=True, add_input=True).square().mean().backward()


for _ in range(3):
    step()
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    step()
print("load", os.getloadavg())
for e in prof.events():
    if e.name == "aten::add" and e.input_shapes and len(e.input_shapes[0]) >= 5 and e.cpu_parent is not None:
        print("backward sum", e.input_shapes[:2], e.cpu_parent.name)
times = []
for _ in range(60):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
print(f"step median {statistics.median(times) * 1e3:.2f} ms, min {min(times) * 1e3:.2f} ms")
