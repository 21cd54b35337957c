"""Backward time per autograd node type (hooks, no profiler) of one hippocampus-recipe training step.

Run from the repository root: python benchmarks/results/session24/backward_nodes.py hippocampus THREADS
(the profiler distorted backward ops here: it page-faulted their fresh outputs)."""
import sys, time, torch, collections
sys.path[:0] = ["src", "."]
from benchmarks.recipe_step import recipe_model, step_runner
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
torch.manual_seed(0)
m, cfg = recipe_model(sys.argv[1], 1, 3)
from monai.losses import DeepSupervisionLoss, DiceCELoss
gen = torch.Generator().manual_seed(0)
x = torch.randn(4, 1, 40, 56, 40, generator=gen)
y = torch.randint(0, 3, (4, 1, 40, 56, 40), generator=gen).float()
loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weight_mode="exp")
m.train()
acc = collections.defaultdict(lambda: [0, 0.0])
def instrument(root):
    seen = set(); stack = [root]
    while stack:
        n = stack.pop()
        if n is None or n in seen: continue
        seen.add(n)
        st = {}
        n.register_prehook(lambda g, n=n, st=st: st.__setitem__("t", time.perf_counter()))
        n.register_hook(lambda gi, go, n=n, st=st: acc[n.name()].__setitem__(0, acc[n.name()][0] + 1) or acc[n.name()].__setitem__(1, acc[n.name()][1] + time.perf_counter() - st["t"]))
        stack.extend(f for f, _ in n.next_functions)
for it in range(6):
    t0 = time.perf_counter()
    out = m(x); l = loss_fn(out, y)
    t1 = time.perf_counter()
    if it == 5:
        acc.clear(); instrument(l.grad_fn)
    l.backward()
    t2 = time.perf_counter()
print(f"forward {t1-t0:.3f} backward {t2-t1:.3f}")
tot = 0
for k, (n, s) in sorted(acc.items(), key=lambda kv: -kv[1][1])[:25]:
    print(f"{s*1e3:8.1f} ms n={n:3d} {k}"); tot += s
print("sum listed", tot)
