"""Forward and forward + backward of the hippocampus network's convolutions (stem, down, up) alone.

Run from the repository root: python benchmarks/results/session24/convs.py THREADS"""
import sys, time, torch
sys.path[:0] = ["src", "."]
from benchmarks.common import interleaved
from benchmarks.recipe_step import recipe_model
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
m, cfg = recipe_model("hippocampus", 1, 3)
m.train()
def med(f, n=7):
    """Median milliseconds of ``n`` calls after a warm-up."""
    return interleaved({"f": f}, n, torch.device("cpu"))["f"].median * 1e3
cl = torch.channels_last_3d
cases = [("stem", m.stem, torch.randn(4, 1, 40, 56, 40).contiguous(memory_format=cl), False),
         ("down.0", m.down[0], torch.randn(4, 16, 40, 56, 40).contiguous(memory_format=cl), True),
         ("up.0", m.up[0], torch.randn(4, 32, 20, 28, 20).contiguous(memory_format=cl), True),
         ("down.1", m.down[1], torch.randn(4, 32, 20, 28, 20).contiguous(memory_format=cl), True),
         ("up.1", m.up[1], torch.randn(4, 64, 10, 14, 10).contiguous(memory_format=cl), True)]
for name, mod, x, rg in cases:
    x.requires_grad_(rg)
    def fb():
        y = mod(x); y.backward(torch.ones_like(y))
    def f():
        with torch.no_grad(): mod(x)
    print(name, type(mod).__name__, "f+b", round(med(fb), 1), "fwd", round(med(f), 1))
