"""Dropout masks of one hippocampus-recipe training step: how many 16-bit numbers it draws, what PyTorch's
``random_`` (mt19937) takes for their 64-bit words, and a counter-based alternative (a splitmix64 hash of the
word index with torch's integer ops, in pieces; checked against a pure-Python splitmix64). Tuned allocator.

Run from the repository root: python benchmarks/results/session25/mask_draw.py THREADS"""
import math, statistics, sys, time
sys.path[:0] = ["src", "."]
import torch
from factorseg import allocator
from factorseg.models.layers import dropout, mlp
from benchmarks.recipe_step import recipe_model
allocator.tune()
torch.set_num_threads(int(sys.argv[1]))
drawn = [0]
keep_mask = dropout.keep_mask
def counting(shape, *args, **kwargs):
    drawn[0] += math.prod(shape)
    return keep_mask(shape, *args, **kwargs)
dropout.keep_mask = mlp.keep_mask = counting
torch.manual_seed(0)
m, _ = recipe_model("hippocampus", 1, 3)
m.train()
sum(o.sum() for o in m(torch.randn(4, 1, 40, 56, 40))).backward()
words = drawn[0] // 4
print(f"mask numbers per step {drawn[0]}, 64-bit words {words}")

def s64(v): return v - (1 << 64) if v >= 1 << 63 else v
GAMMA, C1, C2 = s64(0x9E3779B97F4A7C15), s64(0xBF58476D1CE4E5B9), s64(0x94D049BB133111EB)
def splitmix(n, key, piece=1 << 15):
    w = torch.empty(n, dtype=torch.int64)
    t = torch.empty(piece, dtype=torch.int64)
    for s in range(0, n, piece):
        z = torch.arange(s + 1, min(s + piece, n) + 1, dtype=torch.int64, out=w[s : s + piece])
        z.mul_(GAMMA).add_(key)
        tt = t[: z.numel()]
        for shift, c in ((30, C1), (27, C2), (31, None)):
            torch.bitwise_right_shift(z, shift, out=tt)
            z.bitwise_xor_(tt.bitwise_and_((1 << (64 - shift)) - 1))
            if c is not None:
                z.mul_(c)
    return w
def reference(i, key):
    z = (key + (i + 1) * 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return s64(z ^ (z >> 31))
assert [int(v) for v in splitmix(100, 12345)] == [reference(i, 12345) for i in range(100)]
w = torch.empty(words, dtype=torch.int64)
for name, f in (("random_ (mt19937)", lambda: w.random_(-(2**63), None)), ("splitmix64 hash", lambda: splitmix(words, 777))):
    ts = []
    for _ in range(6):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    print(f"{sys.argv[1]} threads, {name}: median {1e3 * statistics.median(ts[1:]):.1f} ms")
