import torch, time, statistics, sys
import torch.nn.functional as F
torch.set_num_threads(1)
c, n = int(sys.argv[1]), int(sys.argv[2])
v = n**3
y0 = torch.randn(v, c)
ln = torch.nn.LayerNorm(c)
w1, b1 = torch.randn(2*c, c) * 0.1, torch.randn(2*c) * 0.1
w2, b2 = torch.randn(c, 2*c) * 0.1, torch.randn(c) * 0.1
def whole(y):
    nrm = F.layer_norm(y, (c,), ln.weight, ln.bias, ln.eps)
    h = torch.ops.aten.gelu_(F.linear(nrm, w1, b1))
    y.addmm_(h, w2.t()); y.add_(b2)
def chunked(y, rows):
    for ch in y.split(rows):
        nrm = F.layer_norm(ch, (c,), ln.weight, ln.bias, ln.eps)
        h = torch.ops.aten.gelu_(torch.addmm(b1, nrm, w1.t()))
        ch.addmm_(h, w2.t()); ch.add_(b2)
ref = y0.clone(); 
with torch.inference_mode():
    whole(ref)
    fns = {'whole': whole, **{f'rows{r}': (lambda y, r=r: chunked(y, r)) for r in (1024, 4096, 16384, 65536)}}
    for k, f in fns.items():
        y = y0.clone(); f(y); print(k, 'maxdiff', (y - ref).abs().max().item())
    T = {k: [] for k in fns}
    for _ in range(5):
        for k, f in fns.items():
            y = y0.clone(); t = time.perf_counter(); f(y); T[k].append(time.perf_counter() - t)
    for k, t in T.items(): print(k, f'{statistics.median(t)*1000:.1f} ms')
