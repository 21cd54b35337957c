import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
N=64*2**20  # 256 MB floats
x=torch.randn(N); out=torch.empty(N); rec=torch.randn(2**20)  # 4 MB chunk
def outofplace():
    for i in range(0,N,2**20):
        torch.add(x[i:i+2**20], rec, out=out[i:i+2**20])
def inplace():
    for i in range(0,N,2**20):
        x[i:i+2**20].add_(rec)
def fresh():
    o=torch.empty(N)
    for i in range(0,N,2**20):
        torch.add(x[i:i+2**20], rec, out=o[i:i+2**20])
for f in (outofplace,inplace,fresh): f()
res={f.__name__:[] for f in (outofplace,inplace,fresh)}
for r in range(9):
    for f in (outofplace,inplace,fresh):
        t=time.perf_counter(); f(); res[f.__name__].append(time.perf_counter()-t)
for k,v in res.items(): v.sort(); print(sys.argv[1],"T",k, f"{v[4]*1e3:.1f} ms")
