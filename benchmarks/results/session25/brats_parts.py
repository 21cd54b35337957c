"""Where the BraTS preset's time goes, tuned allocator (the time per voxel is flat from 64^3 to 160^3).

Run from the repository root: python benchmarks/results/session25/brats_parts.py MODE THREADS SIZE
MODE: step (a training step: forward per module by hooks, backward per autograd node by hooks),
forward (inference forward per module by hooks), ops (inference forward per op, torch.profiler, whose
total matched the unprofiled one for forward passes here)."""
import collections, sys, time
sys.path[:0] = ["src", "."]
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch.profiler import ProfilerActivity, profile
from benchmarks.common import build, inputs, tune_allocator

tune_allocator()
mode, size = sys.argv[1], int(sys.argv[3])
torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
m = build("swin_factorizer", size).train(mode == "step")
x, y = inputs(size, torch.device("cpu"))


def report(title, totals, rows=40):
    print(title)
    for k, s in sorted(totals.items(), key=lambda kv: -kv[1])[:rows]:
        print(f"{s * 1e3:8.1f} ms {k}")


if mode == "ops":
    with torch.inference_mode():
        for _ in range(3):
            t0 = time.perf_counter(); m(x); print(f"unprofiled {time.perf_counter() - t0:.3f} s")
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t0 = time.perf_counter(); m(x); print(f"profiled {time.perf_counter() - t0:.3f} s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=40))
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=30, max_shapes_column_width=90))
    sys.exit()

fwd = collections.defaultdict(float)
started = {}
for name, mod in m.named_modules():
    if name and name.count(".") <= 4:
        mod.register_forward_pre_hook(lambda mod, i, name=name: started.__setitem__(name, time.perf_counter()))
        mod.register_forward_hook(
            lambda mod, i, o, name=name: fwd.__setitem__(name, fwd[name] + time.perf_counter() - started[name]))
if mode == "forward":
    for _ in range(5):
        fwd.clear()
        t0 = time.perf_counter()
        with torch.inference_mode():
            m(x)
        t = time.perf_counter() - t0
    print(f"forward {t:.3f} s")
    report("forward by module (depth <= 4):", fwd)
    sys.exit()

loss_fn = DeepSupervisionLoss(DiceCELoss(sigmoid=True), weight_mode="exp")
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
    loss = loss_fn(m(x), y)
    t1 = time.perf_counter()
    if it == 3:
        instrument(loss.grad_fn)
    loss.backward()
    t2 = time.perf_counter()
    m.zero_grad(set_to_none=True)
print(f"forward {t1 - t0:.3f} s, backward {t2 - t1:.3f} s")
report("forward by module (depth <= 4):", fwd)
print("backward by node:")
for k, (n, s) in sorted(bwd.items(), key=lambda kv: -kv[1][1])[:30]:
    print(f"{s * 1e3:8.1f} ms n={n:3d} {k}")
