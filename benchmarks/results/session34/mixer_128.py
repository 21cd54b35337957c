"""The BraTS preset's mixer at 128^3 (32 channels, windows of 8 shifted by 4: boxes of parts of planes) as the block runs
it in training, dropout 0.1 with the mask drawn beforehand: median forward and backward times over 6 steps after 2.
Run from the repository root or a worktree, with the command's allocator settings in GLIBC_TUNABLES:
python benchmarks/results/session34/mixer_128.py"""
import sys, time, statistics, os
sys.path[:0] = [os.getcwd()+"/src", os.getcwd()]
import torch
from factorseg.models.layers.mixer import NMFMixer
from factorseg.models.layers.nmf import NMFConfig
from factorseg.models.layers.dropout import keep_mask_like
torch.set_num_threads(2); torch.manual_seed(0)
C=32; S=(128,128,128)
m = NMFMixer(C, 3, head_dim=8, window_size=8, shifts=((0,0,0),(4,4,4)), nmf=NMFConfig(num_iters=5))
norm=torch.nn.LayerNorm(C)
x0=torch.randn(1,*S,C)
keep=keep_mask_like(x0, 0.1)
g=torch.ones_like(x0)
F=[];B=[]
for r in range(8):
    x=(x0*1.0).requires_grad_()
    s=time.perf_counter()
    out=m(x, norm=norm, channels_last=True, add_input=True, keep=keep)
    t=time.perf_counter()
    out.backward(g)
    e=time.perf_counter()
    if r>=2: F.append(t-s); B.append(e-t)
print(os.path.basename(os.getcwd()), "fwd %.1f bwd %.1f ms"%(statistics.median(F)*1e3, statistics.median(B)*1e3))
