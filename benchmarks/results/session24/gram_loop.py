"""The Gram matrices' batch-last copy (3D permute vs 2D transpose) and NMF._solve_grams forward / forward + backward
at full hippocampus resolution (22,400 matrices of 8 x 8). Run from the repository root:
python benchmarks/results/session24/gram_loop.py THREADS (at a commit: git worktree + PYTHONPATH)."""
import sys, time, torch
sys.path[:0] = ["src", "."]
from benchmarks.common import interleaved
from factorseg.models.layers import nmf as N
torch.set_num_threads(int(sys.argv[1]))
def med(f, n=9):
    """Median milliseconds of ``n`` calls after a warm-up."""
    return interleaved({"f": f}, n, torch.device("cpu"))["f"].median * 1e3
Bf, m = 22400, 8
X = torch.rand(Bf, m, 64)
G = (X @ X.transpose(1, 2)).view(4, 2, 2, 1400, m, m).contiguous()
start = torch.rand(4, 2, 2, 1400, m, 1)
print("transpose permute", med(lambda: G.reshape(-1, m, m).permute(1, 2, 0).contiguous()))
print("transpose 2d t()", med(lambda: G.reshape(-1, m * m).t().contiguous()))
def blocked():
    out = torch.empty(m * m, Bf)
    src = G.reshape(-1, m * m)
    step = 2048
    for i in range(0, Bf, step):
        out[:, i:i+step].copy_(src[i:i+step].t())
    return out
print("transpose blocked", med(blocked))
nmf = N.NMF(m, 1, 5, init="fixed_uv", columns=64)
g = G.clone().requires_grad_(); s0 = start.clone().requires_grad_()
def fwd():
    with torch.no_grad(): nmf._solve_grams(G, G, 1e-8, start)
def fb():
    u, a = nmf._solve_grams(g, g, 1e-8, s0)
    (u.sum() + a.sum()).backward()
print("solve_grams fwd", med(fwd), "f+b", med(fb))
