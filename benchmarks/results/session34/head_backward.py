"""A deep-supervision head (1x1 convolution, 16 -> 3 channels) on the hippocampus recipe's first level (4 x 16 x 40 x 56
x 40, channels-last) under autograd: median forward + backward time over 50 calls after 5, two threads. Run from the
repository root or a worktree, with the command's allocator settings in GLIBC_TUNABLES:
python benchmarks/results/session34/head_backward.py"""
import os
import statistics
import sys
import time

sys.path[:0] = [os.getcwd() + "/src", os.getcwd()]
import torch  # noqa: E402

from factorseg.models.layers.conv import pointwise_to_channels_first  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
head = torch.nn.Conv3d(16, 3, 1)
x = torch.randn(4, 16, 40, 56, 40).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
grad = torch.randn(4, 3, 40, 56, 40)
times = []
for rep in range(55):
    start = time.perf_counter()
    pointwise_to_channels_first(head, x).backward(grad)
    if rep >= 5:
        times.append(time.perf_counter() - start)
print(os.path.basename(os.getcwd()), f"head forward + backward {statistics.median(times) * 1e3:.2f} ms", os.getloadavg())
