"""Mixer (block.mixer) training step and forward, sub-block vs window path, per (window, head_dim, C): the path rule.

Run from the repository root: python benchmarks/results/session24/mixer_paths.py THREADS [force]
(force: the sub-block path even where factorseg.models.layers.mixer.subblocks_pay says no)."""
import sys, time, torch
sys.path[:0] = ["src", "."]
from benchmarks.common import interleaved
from factorseg.models.blocks import FactorizerBlock
from factorseg.models.layers.nmf import NMFConfig
from factorseg.models.layers.mixer import with_mixer_path
import factorseg.models.layers.mixer as MX
if len(sys.argv) > 2: MX.subblocks_pay = lambda c, e: True
torch.set_num_threads(int(sys.argv[1]))
def med(f, n=5):
    """Median milliseconds of ``n`` calls after a warm-up."""
    return interleaved({"f": f}, n, torch.device("cpu"))["f"].median * 1e3
cases = [  # window, head_dim, C, batch, spatial
    (4, 8, 16, 4, (40, 56, 40)), (4, 8, 32, 4, (20, 28, 20)), (4, 4, 32, 1, (64, 64, 64)), (4, 4, 64, 1, (32, 32, 32)),
    (8, 8, 32, 1, (64, 64, 64)), (8, 8, 64, 1, (32, 32, 32)), (8, 8, 128, 1, (32, 32, 32)), (8, 8, 256, 1, (16, 16, 16)),
]
for w, hd, c, b, sp in cases:
    torch.manual_seed(0)
    blk = FactorizerBlock(c, 3, 2.0, 0.1, head_dim=hd, window_size=w, shifts=[0, w // 2], nmf=NMFConfig(1, 5))
    blk.train()
    x = torch.randn(b, c, *sp).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    res = []
    for path in ("subblocks", "windows"):
        bb = with_mixer_path(blk, path)
        def fb():
            y = bb.mixer(x, norm=bb.norm1.norm); y.backward(torch.ones_like(y))
        def f():
            with torch.no_grad(): bb.mixer(x, norm=bb.norm1.norm)
        res.append((med(fb), med(f)))
    (sb, sf), (wb, wf) = res
    print(f"win {w} hd {hd} C {c:3d} Q {(w//2)**3:3d} C/Q {c/((w//2)**3):5.2f} vox {b*sp[0]*sp[1]*sp[2]:8d}: f+b sub {sb:7.1f} win {wb:7.1f} ratio {wb/sb:5.2f} | fwd sub {sf:6.1f} win {wf:6.1f} ratio {wf/sf:5.2f}")
