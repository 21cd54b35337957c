"""Per-window sums of per-sub-block values: gather every window's sub-blocks and sum, or add each
sub-block into its window (``index_add_``), both as dim-0 kernels over row views.

The hippocampus recipe's full-resolution Gram blocks (B H = 8 slices of K = 11,200 sub-blocks of 8x8,
S = 2 shifts of W = 1,400 windows of 8 sub-blocks; a random window partition per shift). A 64 MiB
buffer is written between calls so that every call reads its input from memory, as in a training
step. Tuned allocator; min and median of 15 calls; one and two threads.

    python benchmarks/results/session26/window_sums_forms.py
"""

import time

import torch

from factorseg import allocator

allocator.tune()
LEAD, K, S, W = 8, 11200, 2, 1400
gen = torch.Generator().manual_seed(0)
window_of = [torch.randperm(K, generator=gen) // 8 for _ in range(S)]  # each sub-block's window, per shift
members = torch.cat([torch.argsort(w, stable=True) for w in window_of]).int()  # each window's sub-blocks
u = torch.randn(LEAD, K, 64, generator=gen)
flush = torch.empty(64 << 20, dtype=torch.uint8)


def gather_and_sum() -> torch.Tensor:
    rows = (torch.arange(0, LEAD * K, K, dtype=torch.int32).unsqueeze(1) + members).view(-1)
    return u.view(LEAD * K, 64).index_select(0, rows).view(LEAD, S, W, 8, 64).sum(3)


def add_into_windows() -> torch.Tensor:
    out = u.new_zeros(LEAD * S * W, 64)
    for s in range(S):
        rows = (torch.arange(0, LEAD * S * W, S * W).unsqueeze(1) + (window_of[s] + s * W)).view(-1)
        out.index_add_(0, rows, u.view(LEAD * K, 64))
    return out.view(LEAD, S, W, 64)


torch.testing.assert_close(gather_and_sum(), add_into_windows())
for threads in (1, 2):
    torch.set_num_threads(threads)
    for run in (gather_and_sum, add_into_windows, gather_and_sum, add_into_windows):
        times = []
        for _ in range(15):
            flush.fill_(1)
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        times.sort()
        print(f"{threads} thread(s)  {run.__name__:18s} min {times[0] * 1e3:6.2f} ms  median {times[7] * 1e3:6.2f} ms")
