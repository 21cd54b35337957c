"""Where a BraTS-preset training step's time goes: forward per module (hooks), backward per autograd node.

Run from the repository root: python benchmarks/results/session25/brats_step_parts.py THREADS SIZE
(tuned allocator; the time per voxel of this step is flat from 64^3 to 160^3, so 64^3 stands for 128^3)."""
import collections, sys, time
sys.path[:0] = ["src", "."]
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from benchmarks.common import build, inputs, tune_allocator
tune_allocator()
torch.set_num_threads(int(sys.argv[1]))
size = int(sys.argv[2])
torch.manual_seed(0)
m = build("swin_factorizer", size)
x, y = inputs(size, torch.device("cpu"))
loss_fn = DeepSupervisionLoss(DiceCELoss(sigmoid=True), weight_mode="exp")
m.train()
fwd = collections.defaultdict(float)
st = {}
for name, mod in m.named_modules():
    if name and name.count(".") <= 4:
        mod.register_forward_pre_hook(lambda mod, i, name=name: st.__setitem__(name, time.perf_counter()))
        mod.register_forward_hook(lambda mod, i, o, name=name: fwd.__setitem__(name, fwd[name] + time.perf_counter() - st[name]))
bwd = collections.defaultdict(lambda: [0, 0.0])
def instrument(root):
    seen, stack = set(), [root]
    while stack:
        n = stack.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        s = {}
        n.register_prehook(lambda g, s=s: s.__setitem__("t", time.perf_counter()))
        def post(gi, go, n=n, s=s):
            bwd[n.name()][0] += 1
            bwd[n.name()][1] += time.perf_counter() - s["t"]
        n.register_hook(post)
        stack.extend(f for f, _ in n.next_functions)
for it in range(4):
    fwd.clear()
    t0 = time.perf_counter()
    l = loss_fn(m(x), y)
    t1 = time.perf_counter()
    if it == 3:
        instrument(l.grad_fn)
    l.backward()
    t2 = time.perf_counter()
    m.zero_grad(set_to_none=True)
print(f"forward {t1 - t0:.3f} s, backward {t2 - t1:.3f} s")
print("forward by module (depth <= 4):")
for k, s in sorted(fwd.items(), key=lambda kv: -kv[1])[:40]:
    print(f"{s * 1e3:8.1f} ms {k}")
print("backward by node:")
tot = 0.0
for k, (n, s) in sorted(bwd.items(), key=lambda kv: -kv[1][1])[:30]:
    print(f"{s * 1e3:8.1f} ms n={n:3d} {k}")
    tot += s
print(f"sum listed {tot:.3f} s")
