import torch, time, statistics
import torch.nn.functional as F
import factorseg.allocator as A; A.tune(); torch.set_num_threads(1)
torch.set_grad_enabled(False)
V=2**21; C=32; H=64; n=8192
y = torch.randn(V, C); y2 = y.clone()
ln = torch.nn.LayerNorm(C); w1 = torch.randn(H, C)*0.1; b1 = torch.randn(H)*0.1; w2 = torch.randn(C, H)*0.1; b2 = torch.randn(C)*0.1
def base(y):
    for rows in y.split(n):
        h = torch.ops.aten.gelu_(F.linear(ln(rows), w1, b1))
        rows.addmm_(h, w2.t())
        rows.add_(b2)
hb = torch.empty(n, H + 1); hb[:, H] = 1.0
w2a = torch.cat([w2, b2[:, None]], 1)
def aug2(y):
    for rows in y.split(n):
        h = hb[: rows.shape[0]]
        torch.addmm(b1, ln(rows), w1.t(), out=h[:, :H])
        torch.ops.aten.gelu_(h[:, :H])
        rows.addmm_(h, w2a.t())
w1a = torch.cat([w1, b1[:, None]], 1)
def aug2_nobiascopy(y):
    for rows in y.split(n):
        h = hb[: rows.shape[0]]
        torch.mm(ln(rows), w1.t(), out=h[:, :H])
        h[:, :H].add_(b1)
        torch.ops.aten.gelu_(h[:, :H])
        rows.addmm_(h, w2a.t())
hb2 = torch.empty(n, H)
def prealloc(y):
    for rows in y.split(n):
        h = hb2[: rows.shape[0]]
        torch.addmm(b1, ln(rows), w1.t(), out=h)
        torch.ops.aten.gelu_(h)
        rows.addmm_(h, w2.t())
        rows.add_(b2)
a = y.clone(); b = y.clone(); base(a); aug2(b); print("diff", (a-b).abs().max().item())
fs=[base, aug2, aug2_nobiascopy, prealloc]
res={f.__name__:[] for f in fs}
for _ in range(7):
    for f in fs:
        t=time.perf_counter(); f(y); res[f.__name__].append(time.perf_counter()-t)
for k,v in res.items(): print(f"{k:16s} {statistics.median(v)*1e3:.1f} ms  min {min(v)*1e3:.1f}")
