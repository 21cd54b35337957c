"""LayerNorm over 32 channels of 16,384 rows (one cache-sized row block of the BraTS preset's first level):
``native_layer_norm`` against other formulations of the same values. Tuned allocator.

Run from the repository root: python benchmarks/results/session25/layer_norm_forms.py THREADS"""
import statistics, sys, time
sys.path[:0] = ["src", "."]
import torch
import torch.nn.functional as F
from factorseg import allocator
allocator.tune()
torch.set_num_threads(int(sys.argv[1]))
c, n, eps = 32, 16384, 1e-5
gen = torch.Generator().manual_seed(0)
x = torch.randn(n, c, generator=gen) * 3 + 5
w, b = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
ones = torch.full((c, 1), 1.0 / c)
def var_mean():
    var, mean = torch.var_mean(x, dim=-1, correction=0, keepdim=True)
    return (x - mean).mul_(torch.rsqrt(var.add_(eps))).mul_(w).add_(b)
def two_pass_products():
    xc = x - x @ ones
    return xc.mul_(torch.rsqrt(((xc * xc) @ ones).add_(eps))).mul_(w).add_(b)
forms = {
    "native_layer_norm": lambda: F.layer_norm(x, (c,), w, b, eps),
    "group_norm (one group)": lambda: F.group_norm(x.unsqueeze(-1), 1, w, b, eps).squeeze(-1),
    "var_mean, then elementwise": var_mean,
    "two-pass statistics by matrix products": two_pass_products,
}
ref = forms["native_layer_norm"]()
for name, f in forms.items():
    torch.testing.assert_close(f(), ref, rtol=1e-5, atol=1e-5)
    for _ in range(3):
        f()
    ts = []
    for _ in range(30):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    print(f"{sys.argv[1]} threads, {name}: median {1e3 * statistics.median(ts):.2f} ms")
