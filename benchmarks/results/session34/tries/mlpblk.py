import sys, time, statistics
sys.path[:0] = ["src", "."]
import torch
import factorseg.models.layers.fastpath as fp
from factorseg.models.layers.mlp import MLP, mlp_residual
torch.set_num_threads(int(sys.argv[1])); torch.manual_seed(0)
C=int(sys.argv[2]) if len(sys.argv)>2 else 16
shape=(4,40,56,40) if C==16 else (4,20,28,20)
mlp=MLP(C, 2.0, 0.1, 3).train(); norm=torch.nn.LayerNorm(C)
y0=torch.randn(*shape, C)
def step():
    y=(y0*1.0).requires_grad_()
    out=mlp_residual(y*1.0, norm, mlp)
    out.backward(torch.ones_like(out))
T={}
sizes=[0.5,1,2,4]
for r in range(25):
    for mb in (sizes if r%2==0 else sizes[::-1]):
        fp.ROW_BLOCK_BYTES=int(mb*2**20)
        s=time.perf_counter(); step(); e=time.perf_counter()-s
        if r>=3: T.setdefault(mb,[]).append(e)
for mb in sizes: print(f"{mb} MiB/thread: median {statistics.median(T[mb])*1e3:.2f} ms")
