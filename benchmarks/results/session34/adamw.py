"""AdamW step time of the hippocampus recipe's models: PyTorch's default loop (foreach=False, the CPU default), foreach and
fused, median of 30 steps after 5 (random gradients). Run from the repository root: python benchmarks/results/session34/adamw.py THREADS"""
import sys, time
sys.path[:0] = ["src", "."]
import torch
from benchmarks.recipe_step import recipe_model
torch.set_num_threads(int(sys.argv[1]))
for rec in ["hippocampus", "hippocampus_segresnet"]:
    model, cfg = recipe_model(rec, 1, 3)
    ps=list(model.parameters())
    for p in ps: p.grad=torch.randn_like(p)
    res={}
    for name,kw in [("single",dict(foreach=False)),("foreach",dict(foreach=True)),("fused",dict(fused=True))]:
        opt=torch.optim.AdamW(ps, lr=1e-4, **kw)
        for _ in range(5): opt.step()
        ts=[]
        for _ in range(30):
            t=time.perf_counter(); opt.step(); ts.append(time.perf_counter()-t)
        res[name]=sorted(ts)[15]*1e3
    print(rec, len(ps), "params tensors", sum(p.numel() for p in ps), {k: round(v,2) for k,v in res.items()})
