import sys, time, resource, statistics
sys.path[:0] = ["src", "."]
import torch
from benchmarks.recipe_step import recipe_model, step_runner
torch.set_num_threads(2)
import os
if os.environ.get("LARGE_MIB"):
    import factorseg.models.layers.pool as P; P.LARGE = int(float(os.environ["LARGE_MIB"]) * 2**20)
for rec in sys.argv[1:]:
    model, cfg = recipe_model(rec, 1, 3)
    run = step_runner(model, cfg, 1, 3)
    for _ in range(3): run()
    f=[]; ts=[]
    for _ in range(6):
        a=resource.getrusage(resource.RUSAGE_SELF); t=time.perf_counter(); run(); t=time.perf_counter()-t; b=resource.getrusage(resource.RUSAGE_SELF)
        f.append(b.ru_minflt-a.ru_minflt); ts.append(t)
    print(rec, "faults/step", statistics.median(f), "= %.0f MiB"%(statistics.median(f)*4/1024), "step %.3f"%statistics.median(ts))
