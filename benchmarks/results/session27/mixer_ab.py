"""Interleaved A/B of the inference box paths on one full-resolution BraTS block (32 channels).

old: the projected map laid out by to_subblocks, the output through from_subblocks plus the residual;
proj / out: only the projection / only the output box by box; both: the shipped path.
    PYTHONPATH=. python benchmarks/results/session27/mixer_ab.py THREADS SIZE CHANNELS ROUNDS
(mixer_ab.txt: recorded at 86bbb36 and 4075fa2 with the methods of that time; this form runs at HEAD.)
"""
import statistics
import sys
import time

import torch

from benchmarks.common import build, tune_allocator
from factorseg.models.blocks import FactorizerBlock
from factorseg.models.layers import mixer as M
from factorseg.models.layers.windows import from_subblocks, pad_channels_last, to_subblocks

tune_allocator()
torch.set_num_threads(int(sys.argv[1]))
size, ch = int(sys.argv[2]), int(sys.argv[3])
m = build("swin_factorizer", 64)
blk = next(b for b in m.modules() if isinstance(b, FactorizerBlock) and b.mixer.in_proj.in_channels == ch).eval()
x = torch.randn(1, ch, size, size, size).movedim(1, -1).contiguous().movedim(-1, 1)


def old_project(xl, norm, w, b, lay, edges, head_dim, weights, *rest):
    h = torch.relu_(torch.nn.functional.linear(torch.nn.functional.layer_norm(xl, (xl.shape[-1],), *norm[:2], norm[2]), w, b))
    return to_subblocks(pad_channels_last(h, lay), lay, edges), None, None


def old_output(residual, blocks, left, right, bias, keep, lay, edges, *rest):
    rec = torch.bmm(torch.bmm(blocks.reshape(-1, *blocks.shape[2:]), left.transpose(1, 2)), right)
    if bias is not None:
        rec = rec.add_(bias)
    return residual + from_subblocks(rec.view(blocks.shape), lay, edges)


new_project, new_output = M.project_subblocks, M.add_subblock_output
variants = {
    "old": (old_project, old_output), "proj": (new_project, old_output),
    "out": (old_project, new_output), "both": (new_project, new_output),
}
ts: dict[str, list[float]] = {k: [] for k in variants}
with torch.inference_mode():
    for _ in range(int(sys.argv[4])):
        for k, (p, a) in variants.items():
            M.project_subblocks, M.add_subblock_output = p, a
            t = time.perf_counter()
            blk(x)
            ts[k].append(time.perf_counter() - t)
for k, v in ts.items():
    v = v[1:]
    print(f"{k:5s} median {statistics.median(v) * 1e3:7.1f} ms  min {min(v) * 1e3:7.1f} ms")
