"""One process: the hippocampus step on two threads (median and min of 6 after 3 warm-ups) with the process's huge
pages and resident memory: python benchmarks/results/session32/tries/step_per_process.py RECIPE"""
import sys, time, torch, statistics
sys.path[:0]=["src","."]
from benchmarks.recipe_step import recipe_model, step_runner
torch.set_num_threads(2)
model,cfg=recipe_model(sys.argv[1],1,3); run=step_runner(model,cfg,1,3)
for _ in range(3): run()
ts=[]
for _ in range(6):
    t=time.perf_counter(); run(); ts.append(time.perf_counter()-t)
def field(name, path="/proc/self/smaps_rollup"):
    for l in open(path):
        if l.startswith(name): return int(l.split()[1])//1024
print(sys.argv[1], f"median {statistics.median(ts)*1e3:.0f} ms min {min(ts)*1e3:.0f}",
      "AnonHuge MiB", field("AnonHugePages:"), "Rss MiB", field("Rss:"))
