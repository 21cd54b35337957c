"""Per-op profile (torch.profiler) of the BraTS preset's inference forward, tuned allocator.

Run from the repository root: python benchmarks/results/session25/brats_forward_ops.py THREADS SIZE
(for forward passes the profiled total matched the unprofiled one here; see docs/performance.md)."""
import sys, time
sys.path[:0] = ["src", "."]
import torch
from torch.profiler import ProfilerActivity, profile
from benchmarks.common import build, inputs, tune_allocator
tune_allocator()
torch.set_num_threads(int(sys.argv[1]))
size = int(sys.argv[2])
torch.manual_seed(0)
m = build("swin_factorizer", size).eval()
x, _ = inputs(size, torch.device("cpu"))
with torch.inference_mode():
    for _ in range(3):
        t0 = time.perf_counter(); m(x); print(f"unprofiled {time.perf_counter() - t0:.3f} s")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter(); m(x); print(f"profiled {time.perf_counter() - t0:.3f} s")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=40))
print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25,
                                                         max_name_column_width=30, max_shapes_column_width=90))
