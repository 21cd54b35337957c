"""One level-0 BraTS block in inference: the MLP branch on the mixer's output boxes (fused) or after (separate).

Runs at ea62947 (the reverted try): PYTHONPATH=. python benchmarks/results/session27/then_ab.py
"""
import sys, time, statistics, torch
from benchmarks.common import build, tune_allocator
tune_allocator(); torch.set_num_threads(1)
from factorseg.models.blocks import FactorizerBlock
from factorseg.models.layers import mixer as M
m = build("swin_factorizer", 64)
blk = next(b for b in m.modules() if isinstance(b, FactorizerBlock) and b.mixer.in_proj.in_channels == 32).eval()
x = torch.randn(1, 32, 128, 128, 128).movedim(1, -1).contiguous().movedim(-1, 1)
orig = M.add_subblock_output
def separate(*a):
    then = a[-1]
    out = orig(*a[:-1], None)
    then.apply_(out.view(-1, out.shape[-1]))
    return out
ts = {"fused": [], "separate": []}
with torch.inference_mode():
    for r in range(9):
        for k in ts:
            M.add_subblock_output = orig if k == "fused" else separate
            t = time.perf_counter(); blk(x); ts[k].append(time.perf_counter() - t)
for k, v in ts.items():
    v = v[1:]; print(k, f"median {statistics.median(v)*1e3:.1f} min {min(v)*1e3:.1f} ms")
