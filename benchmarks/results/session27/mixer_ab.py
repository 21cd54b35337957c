"""Interleaved A/B of the inference box paths on one full-resolution BraTS block (32 channels).

old: the projected map laid out by to_subblocks, the output through from_subblocks plus the residual;
proj / out: only the projection / only the output box by box; both: the shipped path.
    PYTHONPATH=. python benchmarks/results/session27/mixer_ab.py THREADS SIZE CHANNELS ROUNDS   (a warm-up round, then ROUNDS - 1 timed)
(mixer_ab.txt: recorded at 86bbb36 and 4075fa2 with the methods of that time; this form runs at HEAD.)
"""
import sys
from collections.abc import Callable

import torch

from benchmarks.common import build, interleaved, tune_allocator
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


def variant(project: Callable[..., object], output: Callable[..., object]) -> Callable[[], object]:
    def run() -> object:
        M.project_subblocks, M.add_subblock_output = project, output
        with torch.inference_mode():
            return blk(x)

    return run


timings = interleaved({k: variant(*v) for k, v in variants.items()}, int(sys.argv[4]) - 1, torch.device("cpu"))
for k, t in timings.items():
    print(f"{k:5s} median {t.median * 1e3:7.1f} ms  min {t.min * 1e3:7.1f} ms")
