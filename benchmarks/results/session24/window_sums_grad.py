"""window_sums at full hippocampus resolution, forward + backward: autograd through the gather and the sums
(the formulation before 2026-12-06) against the adjoint. Run from the repository root:
python benchmarks/results/session24/window_sums_grad.py THREADS"""
import sys, time, torch
sys.path[:0] = ["src", "."]
from benchmarks.common import interleaved
from factorseg.models.layers import windows as W
torch.set_num_threads(int(sys.argv[1]))
mat = W.WindowMatricize(3, 8, 4, shifts=[(0,0,0),(2,2,2)], positional=True)
lay = mat.layout((40, 56, 40)); edges = W.subblock_edges(lay)
print(lay, edges)
g = torch.rand(4, 2, 11200, 8, 8, requires_grad=True)
def autograd_ws(t, dim):  # window_sums as it was before 2026-12-06: autograd through the gather and the sums
    sub = W._subblock_layout(lay, edges)
    gathered = t.index_select(dim, W._index(None, W._stack_rows, sub, device=t.device))
    shape = (len(lay.shifts), lay.num_windows, sub.window_voxels)
    return gathered.view(*t.shape[:dim], *shape, *t.shape[dim + 1 :]).sum(dim + 2)
def med(f, n=9):
    """Median milliseconds of ``n`` calls after a warm-up."""
    return interleaved({"f": f}, n, torch.device("cpu"))["f"].median * 1e3
go = torch.rand(4, 2, 2, 1400, 8, 8)
def old():
    g.grad = None; autograd_ws(g, 2).backward(go)
def new():
    g.grad = None; W.window_sums(g, lay, edges, dim=2).backward(go)
old(); a = g.grad.clone(); new(); b = g.grad.clone(); print("maxdiff", (a-b).abs().max().item())
for i in range(2):
    print("autograd", round(med(old), 1), "adjoint (window_sums)", round(med(new), 1))
