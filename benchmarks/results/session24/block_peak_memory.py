"""Peak resident memory (high-water mark) of one Factorizer block's training step, sub-block or window path.
Run from the repository root, one process per case:
python benchmarks/results/session24/block_peak_memory.py WINDOW HEAD_DIM CHANNELS BATCH SIZE subblocks|windows
(e.g. 4 4 32 1 96 windows). The path is forced: the rule of subblocks_pay does not apply to path="windows"."""
import sys, time, torch, resource
sys.path[:0] = ["src", "."]
from factorseg.models.blocks import FactorizerBlock
from factorseg.models.layers.nmf import NMFConfig
from factorseg.models.layers.mixer import with_mixer_path
torch.set_num_threads(1)
w, hd, c, b, s, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
blk = with_mixer_path(FactorizerBlock(c, 3, 2.0, 0.1, head_dim=hd, window_size=w, shifts=[0, w // 2], nmf=NMFConfig(1, 5)), path)
blk.train()
x = torch.randn(b, c, s, s, s).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
y = blk(x); y.backward(torch.ones_like(y))
print(path, w, hd, c, s, "peak delta MiB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, "map MiB", x.numel() * 4 / 2**20)
