"""index_select along an inner dim vs one dim-0 gather of whole rows (the leading dims folded into the index).

The shapes of the hippocampus recipe's full-resolution window sums (B=4, H=2, K=11,200 sub-blocks,
8x8 Gram blocks; S W = 2,800 windows): the forward gather (22,400 rows per slice) and the adjoint's
per-shift gather (11,200). A 64 MiB buffer is written between calls so that every call reads its
input from memory, as in a training step. One and two threads, tuned allocator, min and median of 30 calls.

    python benchmarks/results/session26/index_select_forms.py
"""

import time

import torch

from factorseg import allocator

allocator.tune()
K, SW, LEAD = 11200, 2800, 8
gen = torch.Generator().manual_seed(0)
forward_rows = torch.randint(0, K, (2 * SW * 4,), generator=gen, dtype=torch.int32)
adjoint_rows = torch.randint(0, SW, (K,), generator=gen, dtype=torch.int32)
u = torch.randn(4, 2, K, 8, 8, generator=gen)
g = torch.randn(4, 2, SW, 8, 8, generator=gen)
flush = torch.empty(64 << 20, dtype=torch.uint8)


def folded(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    n = t.shape[2]
    flat = (torch.arange(0, LEAD * n, n, dtype=rows.dtype).unsqueeze(1) + rows).view(-1)
    return t.reshape(LEAD * n, 64).index_select(0, flat)


forms = {
    "forward, index_select(dim=2)": lambda: u.index_select(2, forward_rows),
    "forward, folded dim-0 gather": lambda: folded(u, forward_rows),
    "adjoint, index_select(dim=2)": lambda: g.index_select(2, adjoint_rows),
    "adjoint, folded dim-0 gather": lambda: folded(g, adjoint_rows),
}
assert torch.equal(forms["forward, index_select(dim=2)"]().flatten(), forms["forward, folded dim-0 gather"]().flatten())
for threads in (1, 2):
    torch.set_num_threads(threads)
    for name, run in forms.items():
        for _ in range(3):
            run()
        times = []
        for _ in range(30):
            flush.fill_(1)
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        times.sort()
        print(f"{threads} thread(s)  {name:30s} min {times[0] * 1e3:6.2f} ms  median {times[15] * 1e3:6.2f} ms")
