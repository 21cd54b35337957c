import sys, time, statistics
sys.path[:0] = ["src", "."]
import torch
torch.set_num_threads(int(sys.argv[1]))
B,H,G,E=4,2,(20,28,20),64
src=torch.rand(B,H,*G,E)
def bench(f, r=50):
    for _ in range(5): f()
    ts=[]
    for _ in range(r):
        s=time.perf_counter(); f(); ts.append(time.perf_counter()-s)
    return statistics.median(ts)*1e3
# current: index_add_ per shift over flattened rows
from factorseg.models.layers.windows import WindowMatricize, subblock_edges, window_sums
wm = WindowMatricize(3, 8, 4, ((0,0,0),(2,2,2)))
lay = wm.layout((40,56,40)); edges = subblock_edges(lay)
flat = src.view(B, H, -1, E)
def cur(): return window_sums(flat, lay, edges, dim=2, tables=wm.tables)
def pairs(x, dims):
    for d in dims:
        x = x.unflatten(d, (x.shape[d]//2, 2)).sum(d+1)
    return x
def structured():
    s0 = pairs(src, (2,3,4)).view(B,H,-1,E)
    r = torch.roll(src, shifts=(-1,-1,-1), dims=(2,3,4))
    s1 = pairs(r, (2,3,4)).view(B,H,-1,E)
    return torch.stack((s0, s1), 2)
def structured2():
    out = src.new_empty(B,H,2,5*7*5*8//8*1,E) if False else None
    # shift 0: x[2i]+x[2i+1]; shift 1: x[2i+1]+x[(2i+2)%G]
    res=[]
    for sh in (0,1):
        x = src
        for d in (2,3,4):
            ev = x.narrow(d, 0, x.shape[d]).unflatten(d, (x.shape[d]//2, 2))
            a, b = ev.select(d+1, 0), ev.select(d+1, 1)
            if sh == 0:
                x = a + b
            else:
                x = b + torch.roll(a, -1, d)
        res.append(x.reshape(B,H,-1,E))
    return torch.stack(res, 2)
ref = cur()
print("match structured", torch.allclose(ref.reshape(structured().shape), structured(), atol=1e-4), torch.allclose(ref.reshape(structured2().shape), structured2(), atol=1e-4))
print("index_add", bench(cur), "roll+pairs", bench(structured), "pairwise", bench(structured2))
