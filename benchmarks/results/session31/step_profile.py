"""Where the hippocampus recipe's training step spends its time, per ATen op (self CPU time, torch.profiler), on
THREADS threads: the mean of 5 profiled steps after 3 warm-ups. The profiler inflates large tensors' ops a little;
compare one-thread against two-thread tables for scaling, not as absolute times.

Run from the repository root: python benchmarks/results/session31/step_profile.py THREADS [RECIPE]"""
import sys

sys.path[:0] = ["src", "."]
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.recipe_step import recipe_model, step_runner  # noqa: E402

torch.set_num_threads(int(sys.argv[1]))
recipe = sys.argv[2] if len(sys.argv) > 2 else "hippocampus"
model, cfg = recipe_model(recipe, 1, 3)
run = step_runner(model, cfg, 1, 3)
for _ in range(3):
    run()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(5):
        run()
rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
total = sum(e.self_cpu_time_total for e in rows) / 5e3
print(f"{recipe}, {sys.argv[1]} threads: {total:.1f} ms of self CPU time per step")
for e in rows[:40]:
    print(f"{e.self_cpu_time_total / 5e3:8.2f} ms {e.count // 5:5d} calls  {e.key}")
