"""The 128^3 forward (BraTS preset, two threads by default) with the heads' Gram matrices as session 31 took them
(one product up to 4 heads, head by head above: the function below, a frozen copy) and as ``nmf.head_grams`` now takes
them, interleaved in one process: python benchmarks/results/session32/gram_in_forward.py THREADS ROUNDS"""
import sys, time, torch
sys.path[:0]=["src","."]
from benchmarks.common import build, forward_runner, inputs
import factorseg.models.layers.nmf as nmf, factorseg.models.layers.subblock_boxes as sb
torch.set_num_threads(int(sys.argv[1]))
new=nmf.head_grams
def old(rows, head_dim):
    bf, n, c = rows.shape; heads = c // head_dim
    if heads <= 4:
        full = torch.bmm(rows.transpose(1, 2), rows).view(bf, heads, head_dim, heads, head_dim)
        return full.diagonal(dim1=1, dim2=3).permute(3, 0, 1, 2)
    per_head = rows.view(bf, n, heads, head_dim).permute(2, 0, 3, 1).reshape(heads * bf, head_dim, n)
    return torch.bmm(per_head, per_head.transpose(1, 2)).view(heads, bf, head_dim, head_dim)
run=forward_runner(build("swin_factorizer",128), inputs(128, torch.device("cpu"))[0])
res={"old":[], "new":[]}
for f in (old,new): sb.head_grams=f; run()
for r in range(int(sys.argv[2])):
    for k,f in (("old",old),("new",new)):
        sb.head_grams=f
        t=time.perf_counter(); run(); res[k].append(time.perf_counter()-t)
for k,v in res.items(): v.sort(); print(k, f"min {v[0]*1e3:.0f} med {v[len(v)//2]*1e3:.0f}")
