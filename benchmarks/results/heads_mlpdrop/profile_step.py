"""Per-op profile (self CPU time) of one step: python benchmarks/results/heads_mlpdrop/profile_step.py SIZE train|eval [MODEL]."""
import sys, torch, time
sys.path[:0] = ["src", "."]
from benchmarks.common import build, inputs, train_runner, forward_runner
torch.set_num_threads(1)
size = int(sys.argv[1]); mode = sys.argv[2]; name = sys.argv[3] if len(sys.argv) > 3 else "swin_factorizer"
m = build(name, size)
x, t = inputs(size, torch.device("cpu"))
if mode == "train":
    m.train(); run = train_runner(m, x, t)
else:
    m.eval(); run = forward_runner(m, x)
run(); run()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as p:
    t0 = time.perf_counter(); run(); print("total", time.perf_counter() - t0)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=45))
