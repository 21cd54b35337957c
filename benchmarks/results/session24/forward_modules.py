"""Forward time per module (hooks) of the hippocampus recipe's network in training mode.

Run from the repository root: python benchmarks/results/session24/forward_modules.py THREADS"""
import sys, time, torch, collections
sys.path[:0] = ["src", "."]
from benchmarks.recipe_step import recipe_model
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
m, cfg = recipe_model("hippocampus", 1, 3)
x = torch.randn(4, 1, 40, 56, 40)
m.train()
acc = collections.defaultdict(float)
st = {}
def pre(mod, i, name): st[name] = time.perf_counter()
def post(mod, i, o, name): acc[name] += time.perf_counter() - st[name]
for name, mod in m.named_modules():
    if name.count(".") <= 3 and name:
        mod.register_forward_pre_hook(lambda mod, i, name=name: pre(mod, i, name))
        mod.register_forward_hook(lambda mod, i, o, name=name: post(mod, i, o, name))
for it in range(5):
    acc.clear(); t0 = time.perf_counter(); out = m(x); tt = time.perf_counter() - t0
    sum(o.sum() for o in out).backward()
print("forward", tt)
for k, s in sorted(acc.items(), key=lambda kv: -kv[1])[:30]:
    print(f"{s*1e3:8.1f} ms {k}")
