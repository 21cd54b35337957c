import sys, time, torch
sys.path[:0]=["src","."]
from benchmarks.recipe_step import recipe_model, step_runner
import factorseg.models.layers.fastpath as fp
torch.set_num_threads(int(sys.argv[1]))
sizes=[int(float(s)*2**20) for s in sys.argv[2].split(",")]
model,cfg=recipe_model("hippocampus",1,3); run=step_runner(model,cfg,1,3)
for s in sizes:
    fp.ROW_BLOCK_BYTES=s; run(); run()
res={s:[] for s in sizes}
for r in range(int(sys.argv[3])):
    for s in sizes:
        fp.ROW_BLOCK_BYTES=s
        t=time.perf_counter(); run(); res[s].append(time.perf_counter()-t)
for s in sizes:
    v=sorted(res[s]); print(f"{s/2**20:5.2f} MiB/thread: min {v[0]*1e3:.0f} med {v[len(v)//2]*1e3:.0f} ms")
