"""The hippocampus step on THREADS threads, warmed up, then STEPS steps with the garbage collector timed; writes
/tmp/warm after the warm-up so that perf can attach then:
    python benchmarks/results/session32/steps_for_perf.py 2 hippocampus 20 &
    while [ ! -f /tmp/warm ]; do sleep 0.2; done; perf record -F 999 -g -p $! -o /tmp/perf2.data -- sleep 9
    perf report -i /tmp/perf2.data --no-children --sort pid,dso -g none --stdio"""
import sys, time, torch, gc, os
sys.path[:0]=["src","."]
from benchmarks.recipe_step import recipe_model, step_runner
torch.set_num_threads(int(sys.argv[1]))
model,cfg=recipe_model(sys.argv[2],1,3); run=step_runner(model,cfg,1,3)
for _ in range(3): run()
stats={0:[0,0.0],1:[0,0.0],2:[0,0.0]}
t0=[0.0]
def cb(phase, info):
    if phase=="start": t0[0]=time.perf_counter()
    else:
        s=stats[info["generation"]]; s[0]+=1; s[1]+=time.perf_counter()-t0[0]
gc.callbacks.append(cb)
open("/tmp/warm","w").close()
time.sleep(1)
n=int(sys.argv[3])
s=time.perf_counter()
for _ in range(n): run()
el=(time.perf_counter()-s)/n
print("per step", el, "gc per step:", {g:(v[0]/n, round(v[1]/n*1e3,2)) for g,v in stats.items()}, "objects", len(gc.get_objects()))
