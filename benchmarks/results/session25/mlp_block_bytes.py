"""The training MLP branch (mlp_residual, forward + backward) at the hippocampus's full resolution, for several
row-block sizes (fastpath.ROW_BLOCK_BYTES), tuned allocator.

Run from the repository root: python benchmarks/results/session25/mlp_block_bytes.py THREADS C"""
import sys, time
sys.path[:0] = ["src", "."]
import torch
from factorseg import allocator
from factorseg.models.layers import fastpath
from factorseg.models.layers.mlp import MLP, mlp_residual
allocator.tune()
torch.set_num_threads(int(sys.argv[1]))
c = int(sys.argv[2])
torch.manual_seed(0)
mlp, norm = MLP(c, 4.0, 0.1, 3).train(), torch.nn.LayerNorm(c)
v = 358400 * 16 // c
y = torch.randn(v, c, requires_grad=True)
g = torch.randn(v, c)
res = {}
for rnd in range(3):
    for mib in (1, 2, 4, 8):
        fastpath.ROW_BLOCK_BYTES = mib << 20
        ts = []
        for _ in range(6):
            t0 = time.perf_counter()
            mlp_residual(y, norm, mlp).backward(g)
            ts.append(time.perf_counter() - t0)
        res.setdefault(mib, []).extend(sorted(ts)[1:4])
for mib, ts in res.items():
    ts.sort()
    print(f"{sys.argv[1]} threads, C={c}, {v} rows, {mib} MiB blocks: median {1e3 * ts[len(ts) // 2]:.1f} ms, min {1e3 * ts[0]:.1f} ms")
