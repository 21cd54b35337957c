"""The BraTS preset's in-projection box by box (project_boxes, inference) and its whole mixer forward at 128^3 (32 channels,
windows of 8 shifted by 4): boxes of parts of planes there. Run from the repository root or a worktree, with the
command's allocator settings in GLIBC_TUNABLES: python benchmarks/results/session34/project_128.py"""
import sys, time, statistics, os
sys.path[:0] = [os.getcwd()+"/src", os.getcwd()]
import torch
from factorseg.models.layers.mixer import NMFMixer
from factorseg.models.layers.nmf import NMFConfig
from factorseg.models.layers import subblock_boxes as sb
from factorseg.models.layers.windows import subblock_edges
torch.set_num_threads(2); torch.manual_seed(0)
C=32; S=(128,128,128)
m = NMFMixer(C, 3, head_dim=8, window_size=8, shifts=((0,0,0),(4,4,4)), nmf=NMFConfig(num_iters=5))
norm=torch.nn.LayerNorm(C)
x=torch.randn(1,*S,C)
lay=m.matricize.layout_of(x.movedim(-1,1)); edges=subblock_edges(lay)
w=m._v0_weights(lay, edges, x.dtype)
from factorseg.models.layers.conv import pointwise_weight
def proj():
    with torch.no_grad():
        sb.project_boxes(x, (norm.weight, norm.bias, norm.eps), pointwise_weight(m.in_proj), m.in_proj.bias, lay, edges, 8, w)
def full():
    with torch.no_grad(): m(x, norm=norm, channels_last=True, add_input=True)
for f in (proj, full):
    for _ in range(3): f()
    ts=[]
    for _ in range(10):
        s=time.perf_counter(); f(); ts.append(time.perf_counter()-s)
    print(os.path.basename(os.getcwd()), f.__name__, "%.1f ms"%(statistics.median(ts)*1e3))
