import sys, time, statistics
sys.path[:0] = ["src", "."]
import torch
import factorseg.models.layers.dropout as dr
from benchmarks.recipe_step import recipe_model, step_runner
torch.set_num_threads(int(sys.argv[1]))
orig=dr.random_at_least
acc=[0.0, 0]
def timed(out, bound, generator=None):
    s=time.perf_counter(); r=orig(out, bound, generator); acc[0]+=time.perf_counter()-s; acc[1]+=out.numel(); return r
dr.random_at_least=timed
if len(sys.argv)>2:
    _real=torch.get_num_threads
    def timed2(out, bound, generator=None):
        torch.get_num_threads=lambda: 1
        try: return timed(out, bound, generator)
        finally: torch.get_num_threads=_real
    dr.random_at_least=timed2
model, cfg = recipe_model("hippocampus", 1, 3)
run = step_runner(model, cfg, 1, 3)
for _ in range(3): run()
ms=[]; st=[]
for _ in range(10):
    acc[0]=0; acc[1]=0
    s=time.perf_counter(); run(); st.append(time.perf_counter()-s); ms.append(acc[0])
print(f"step median {statistics.median(st)*1e3:.1f} ms, masks {statistics.median(ms)*1e3:.1f} ms, {acc[1]/1e6:.1f} M numbers/step")
