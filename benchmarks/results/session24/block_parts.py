"""A full-resolution hippocampus Factorizer block's parts (mixer, dropout + residual, MLP) timed alone.

Run from the repository root: python benchmarks/results/session24/block_parts.py THREADS"""
import sys, time, torch
sys.path[:0] = ["src", "."]
from benchmarks.common import interleaved
from factorseg.models.layers.mlp import mlp_residual
from benchmarks.results.session24.hippocampus_block import block_and_input
b, x = block_and_input(int(sys.argv[1]))
xc = x.detach().movedim(1, -1).contiguous().requires_grad_()
def med(f, n=7):
    """Median milliseconds of ``n`` calls after a warm-up."""
    return interleaved({"f": f}, n, torch.device("cpu"))["f"].median * 1e3
def mixer():
    y = b.mixer(x, norm=b.norm1.norm); y.backward(torch.ones_like(y))
def mixer_f():
    with torch.no_grad(): b.mixer(x, norm=b.norm1.norm)
def drop():
    y = xc + b.drop(xc); y.backward(torch.ones_like(y))
def mlp():
    y = mlp_residual(xc, b.norm2.norm, b.mlp); y.backward(torch.ones_like(y))
def mlp_f():
    with torch.no_grad(): b.mlp.add_norm_to_(xc.detach().clone(), b.norm2.norm)
def block():
    y = b(x); y.backward(torch.ones_like(y))
for name, f in [("mixer f+b", mixer), ("mixer fwd", mixer_f), ("drop+res f+b", drop), ("mlp f+b", mlp), ("mlp fwd(incl clone)", mlp_f), ("block f+b", block)]:
    print(f"{name:20s} {med(f):7.1f} ms")
