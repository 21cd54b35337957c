"""Why this session timed backward passes with hooks: the same full-resolution hippocampus mixer training step
timed plain and under torch.profiler, and the profiler's largest ops (fresh map-sized outputs inflate).

Run from the repository root: python benchmarks/results/session24/profiler_distortion.py THREADS"""
import sys, time, torch
sys.path[:0] = ["src", "."]
from torch.profiler import ProfilerActivity, profile
from benchmarks.common import interleaved
from benchmarks.results.session24.hippocampus_block import block_and_input
b, x = block_and_input(int(sys.argv[1]))
def step():
    y = b.mixer(x, norm=b.norm1.norm); y.backward(torch.ones_like(y))
print("plain, median of 7 (ms)", round(interleaved({"f": step}, 7, torch.device("cpu"))["f"].median * 1e3, 1))
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
    t0 = time.perf_counter(); step(); print("under the profiler (ms)", round((time.perf_counter() - t0) * 1e3, 1))
for e in sorted(p.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)[:8]:
    print(f"{e.self_cpu_time_total / 1e3:8.1f} ms n={e.count:3d} {e.key:30s} {str(e.input_shapes)[:70]}")
