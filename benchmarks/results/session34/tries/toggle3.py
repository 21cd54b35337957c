import sys, time, statistics
sys.path[:0] = ["src", "."]
import torch
import factorseg.models.layers.dropout as dr
from benchmarks.recipe_step import recipe_model, step_runner
torch.set_num_threads(int(sys.argv[1])); reps=int(sys.argv[2])
variants={"helped(0)": lambda: setattr(dr, "HELPED_FROM_PIECES", 0), "alone<16": lambda: setattr(dr, "HELPED_FROM_PIECES", 16)}
model, cfg = recipe_model("hippocampus", 1, 3)
run = step_runner(model, cfg, 1, 3)
times={k:[] for k in variants}
for k,f in variants.items(): f(); run(); run()
for r in range(reps):
    for k,f in (list(variants.items()) if r%2==0 else list(reversed(list(variants.items())))):
        f(); s=time.perf_counter(); run(); times[k].append(time.perf_counter()-s)
for k,v in times.items(): print(f"{k:10s} min {min(v):.3f} median {statistics.median(v):.3f}")
