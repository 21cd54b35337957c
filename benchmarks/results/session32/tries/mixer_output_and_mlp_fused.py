import sys, time, torch
sys.path[:0]=["src"]
from factorseg.models.layers.mlp import MLP
torch.set_num_threads(int(sys.argv[1]))
C=32; V=128**3; box=int(sys.argv[2]) if len(sys.argv)>2 else 32768
mlp=MLP(C,2.0,0.0,3).eval(); norm=torch.nn.LayerNorm(C)
r=torch.randn(V,C); rec=torch.randn(box,C); out=torch.empty(V,C)
def A():
    with torch.inference_mode():
        for i in range(0,V,box): torch.add(r[i:i+box], rec, out=out[i:i+box])
        mlp.add_norm_to_(out.view(1,V,C), norm)
def B():
    with torch.inference_mode():
        for i in range(0,V,box):
            o=out[i:i+box]; torch.add(r[i:i+box], rec, out=o)
            mlp.add_norm_to_(o.view(1,box,C), norm)
A();B()
res={"separate":[], "fused":[]}
for _ in range(7):
    for k,f in (("separate",A),("fused",B)):
        t=time.perf_counter(); f(); res[k].append(time.perf_counter()-t)
for k,v in res.items(): v.sort(); print(sys.argv[1],"T",k,f"min {v[0]*1e3:.1f} med {v[3]*1e3:.1f} ms")
