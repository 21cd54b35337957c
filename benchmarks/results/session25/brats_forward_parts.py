"""Inference forward time per module (hooks) of the BraTS preset, tuned allocator.

Run from the repository root: python benchmarks/results/session25/brats_forward_parts.py THREADS SIZE"""
import collections, sys, time
sys.path[:0] = ["src", "."]
import torch
from benchmarks.common import build, inputs, tune_allocator
tune_allocator()
torch.set_num_threads(int(sys.argv[1]))
size = int(sys.argv[2])
torch.manual_seed(0)
m = build("swin_factorizer", size).eval()
x, _ = inputs(size, torch.device("cpu"))
acc = collections.defaultdict(float)
st = {}
for name, mod in m.named_modules():
    if name and name.count(".") <= 4:
        mod.register_forward_pre_hook(lambda mod, i, name=name: st.__setitem__(name, time.perf_counter()))
        mod.register_forward_hook(lambda mod, i, o, name=name: acc.__setitem__(name, acc[name] + time.perf_counter() - st[name]))
for it in range(5):
    acc.clear()
    t0 = time.perf_counter()
    with torch.inference_mode():
        m(x)
    t = time.perf_counter() - t0
print(f"forward {t:.3f} s")
for k, s in sorted(acc.items(), key=lambda kv: -kv[1])[:40]:
    print(f"{s * 1e3:8.1f} ms {k}")
