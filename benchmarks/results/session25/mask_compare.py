"""The 16-bit dropout-mask comparison: ``int16 >= bound`` straight into ``bool`` against dropout.at_least
(compared into int16 pieces, narrowed into the result's bytes), tuned allocator.

Run from the repository root: python benchmarks/results/session25/mask_compare.py THREADS
(``at_least`` was replaced by NumPy's comparison in each mask piece in session 28: run it at ad1efc8 or before)."""
import sys, time
sys.path[:0] = ["src", "."]
import torch
from factorseg import allocator
from factorseg.models.layers.dropout import at_least
allocator.tune()
torch.set_num_threads(int(sys.argv[1]))
n = 358400 * 80  # the hippocampus step's full-resolution masks of one block: 16 + 64 channels
values = torch.empty(n // 4, dtype=torch.int64).random_(-(2**63), None).view(torch.int16)
bound = round(0.1 * 65536) - 32768
assert torch.equal(at_least(values, bound), values >= bound)
for name, f in (("values >= bound", lambda: values >= bound), ("at_least", lambda: at_least(values, bound))):
    ts = []
    for _ in range(16):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    ts = sorted(ts[1:])
    print(f"{sys.argv[1]} threads, {n} values, {name}: median {1e3 * ts[len(ts) // 2]:.1f} ms, min {1e3 * ts[0]:.1f} ms")
