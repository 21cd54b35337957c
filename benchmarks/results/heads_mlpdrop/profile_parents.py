"""Each call of one op by its parent ops and input shapes: python benchmarks/results/heads_mlpdrop/profile_parents.py SIZE aten::where"""
import sys, torch, collections
sys.path[:0] = ["src", "."]
from benchmarks.common import build, inputs, train_runner
torch.set_num_threads(1)
size = int(sys.argv[1])
m = build("swin_factorizer", size); x, t = inputs(size, torch.device("cpu")); m.train(); run = train_runner(m, x, t)
run()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
    run()
agg = collections.defaultdict(lambda: [0, 0.0])
for e in p.events():
    if e.name == sys.argv[2]:
        chain = []
        q = e.cpu_parent
        while q is not None and len(chain) < 4:
            chain.append(q.name); q = q.cpu_parent
        k = (str(e.input_shapes)[:70], " <- ".join(chain))
        agg[k][0] += 1; agg[k][1] += e.cpu_time_total / 1e3
for k, (n, ms) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:14]:
    print(f"{ms:8.1f} ms n={n:4d} {k[0]}  {k[1]}")
