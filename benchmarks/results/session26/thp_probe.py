"""Probe: forward / training-step time, minor faults per run, AnonHugePages and VmHWM of one model
(one thread) under the environment it is started with.

    python benchmarks/results/session26/thp_probe.py MODEL SIZE forward|train REPEATS [--tune]

with or without THP_MEM_ALLOC_ENABLE=1 (PyTorch madvises its allocations of 2 MiB and more as huge
pages) or GLIBC_TUNABLES=...:glibc.malloc.hugetlb=1 (glibc madvises its heap and mmapped chunks).
"""
import json, os, sys, time, statistics
sys.path.insert(0, ".")  # run from the repository root
import torch
from benchmarks.common import build, inputs, forward_runner, train_runner, tune_allocator
model_name, size, mode, reps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if "--tune" in sys.argv: print("tuned", tune_allocator())
torch.set_num_threads(1)
torch.manual_seed(0)
model = build(model_name, size)
x, target = inputs(size, torch.device("cpu"))
run = forward_runner(model, x) if mode == "forward" else train_runner(model, x, target)
def field(path, key):
    for line in open(path):
        if line.startswith(key): return int(line.split()[1]) // 1024
def faults():
    r = open("/proc/self/stat").read().split(")")[1].split()
    return int(r[7]) + int(r[9])  # minflt majflt
run()
ts, fl = [], []
for _ in range(reps):
    f0 = faults(); t = time.perf_counter(); run(); ts.append(time.perf_counter() - t); fl.append(faults() - f0)
print(json.dumps({"env": os.environ.get("GLIBC_TUNABLES", "") + " THP=" + os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
  "model": model_name, "size": size, "mode": mode, "times": [round(t, 3) for t in ts], "median": round(statistics.median(ts), 3),
  "minflt_per_run": fl, "anon_huge_mib": field("/proc/self/smaps_rollup", "AnonHugePages"), "hwm_mib": field("/proc/self/status", "VmHWM")}))
