import torch, time, statistics
import factorseg.allocator as A; A.tune(); torch.set_num_threads(1)
n=256; Q=64; C=32; R=8
X = torch.rand(n,Q,C); L = torch.rand(n,R,C); Rt = torch.rand(n,R,C)
def i(): return torch.bmm(torch.bmm(X, L.transpose(1,2)), Rt)
def ii(): return torch.bmm(X, torch.bmm(L.transpose(1,2), Rt))
def iii(): return torch.bmm(torch.bmm(L, X.transpose(1,2)).transpose(1,2), Rt)
def i_a(): return torch.bmm(X, L.transpose(1,2))
def i_b(t=torch.bmm(X, L.transpose(1,2))): return torch.bmm(t, Rt)
def ii_a(): return torch.bmm(L.transpose(1,2), Rt)
def ii_b(M=torch.bmm(L.transpose(1,2), Rt)): return torch.bmm(X, M)
def mm_flat(): return torch.mm(X.view(-1, C), L[0].t())
fs=[i,ii,iii,i_a,i_b,ii_a,ii_b,mm_flat]
print((i()-ii()).abs().max().item(), (i()-iii()).abs().max().item())
for f in fs: f()
res={f.__name__:[] for f in fs}
for _ in range(30):
    for f in fs:
        t=time.perf_counter(); f(); res[f.__name__].append(time.perf_counter()-t)
for k,v in res.items(): print(f"{k:8s} {statistics.median(v)*1e3:.3f} ms")
