"""The window sums' gathers on the CPU, on the shapes of the hippocampus recipe's full-resolution Gram blocks
(B H = 8 slices of K = 11,200 sub-blocks of 8x8; S W = 2 x 1,400 windows of 8 sub-blocks):

* ``index_select`` along an inner dim against one dim-0 gather of whole rows (the leading dims folded
  into the index), for the forward gather (22,400 rows per slice) and the adjoint's per-shift one (11,200);
* per-window sums: gather every window's sub-blocks and sum, against adding each sub-block into its
  window (``index_add_``), both over row views (random window partitions).

A 64 MiB buffer is written between calls so that every call reads its input from memory, as in a training
step. Tuned allocator; one and two threads; min and median of 20 calls.

    python benchmarks/results/session26/gather_forms.py
"""

import time

import torch

from factorseg import allocator

allocator.tune()
LEAD, K, S, W = 8, 11200, 2, 1400
gen = torch.Generator().manual_seed(0)
u = torch.randn(4, 2, K, 8, 8, generator=gen)  # per sub-block
g = torch.randn(4, 2, S * W, 8, 8, generator=gen)  # per window of each shift
forward_rows = torch.randint(0, K, (S * W * 8,), generator=gen, dtype=torch.int32)
adjoint_rows = torch.randint(0, S * W, (K,), generator=gen, dtype=torch.int32)
window_of = [torch.randperm(K, generator=gen) // 8 for _ in range(S)]  # each sub-block's window, per shift
members = torch.cat([torch.argsort(w, stable=True) for w in window_of]).int()  # each window's sub-blocks
flush = torch.empty(64 << 20, dtype=torch.uint8)


def folded(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``t.index_select(2, rows)`` as one dim-0 gather of the ``(LEAD n, 64)`` row view."""
    n = t.shape[2]
    return t.reshape(LEAD * n, 64).index_select(0, (torch.arange(0, LEAD * n, n, dtype=rows.dtype)[:, None] + rows).view(-1))


def gather_and_sum() -> torch.Tensor:
    return folded(u, members).view(LEAD, S, W, 8, 64).sum(3)


def add_into_windows() -> torch.Tensor:
    out = u.new_zeros(LEAD * S * W, 64)
    for s in range(S):
        rows = (torch.arange(0, LEAD * S * W, S * W)[:, None] + (window_of[s] + s * W)).view(-1)
        out.index_add_(0, rows, u.view(LEAD * K, 64))
    return out.view(LEAD, S, W, 64)


forms = {
    "gather, index_select(dim=2)": lambda: u.index_select(2, forward_rows),
    "gather, folded dim-0": lambda: folded(u, forward_rows),
    "adjoint, index_select(dim=2)": lambda: g.index_select(2, adjoint_rows),
    "adjoint, folded dim-0": lambda: folded(g, adjoint_rows),
    "window sums, gather + sum": gather_and_sum,
    "window sums, index_add_": add_into_windows,
}
assert torch.equal(forms["gather, index_select(dim=2)"]().flatten(), forms["gather, folded dim-0"]().flatten())
torch.testing.assert_close(gather_and_sum(), add_into_windows())
for threads in (1, 2):
    torch.set_num_threads(threads)
    for name, run in forms.items():
        for _ in range(3):
            run()
        times = []
        for _ in range(20):
            flush.fill_(1)
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        times.sort()
        print(f"{threads} thread(s)  {name:30s} min {times[0] * 1e3:6.2f} ms  median {times[10] * 1e3:6.2f} ms")
