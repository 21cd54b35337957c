"""``dropout.random_at_least`` right after an OpenMP op (a oneDNN product, as where the layers draw their masks), two
threads: with a helper thread (``HELPED_FROM_PIECES = 0``) against the calling thread alone, per mask size; medians of
15 calls after 2. Run from the repository root: python benchmarks/results/session34/mask_helpers.py"""
import os
import statistics
import sys
import time

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from factorseg.models.layers import dropout  # noqa: E402

torch.set_num_threads(2)
x, w = torch.randn(65536, 16), torch.randn(32, 16)
print("load", os.getloadavg())


def median_ms(n: int, helped: bool, repeats: int = 15) -> float:
    dropout.HELPED_FROM_PIECES = 0 if helped else 1 << 30
    out, times = torch.empty(n, dtype=torch.bool), []
    for rep in range(repeats + 2):
        torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        start = time.perf_counter()
        dropout.random_at_least(out, -26214)
        if rep >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


for n in (1 << 20, 2_700_000, 5_700_000, 11_500_000, 23_000_000, 46_000_000):
    helped, alone = median_ms(n, True), median_ms(n, False)
    print(f"{n / 1e6:5.1f} M numbers: with a helper {helped:6.2f} ms, calling thread alone {alone:6.2f} ms, "
          f"ratio {helped / alone:4.2f}")
