"""The hippocampus stem (1 -> 16 channels) padded to 8 input channels against stem_conv (then conv_padded_input; a channels-last copy of
the one-channel conv): forward + backward medians (ms). Run from the repository root:
python benchmarks/results/session24/stem_one_channel.py THREADS"""
import sys, torch
sys.path[:0] = ["src", "."]
import torch.nn.functional as F
from benchmarks.common import interleaved
from factorseg.models.layers.conv import channels_last, stem_conv
torch.set_num_threads(int(sys.argv[1]))
conv = torch.nn.Conv3d(1, 16, 3, padding=1, bias=False)
x = channels_last(torch.randn(4, 1, 40, 56, 40))
def fb(f):
    def g():
        conv.weight.grad = None
        y = f(); y.backward(torch.ones_like(y))
    return g
pad = lambda: F.conv3d(channels_last(F.pad(x, (0, 0, 0, 0, 0, 0, 0, 7))), F.pad(conv.weight, (0, 0, 0, 0, 0, 0, 0, 7)), None, 1, 1)
new = lambda: stem_conv(conv, x)
t = interleaved({"pad": fb(pad), "new": fb(new)}, 9, torch.device("cpu"))
print({k: round(v.median * 1e3, 1) for k, v in t.items()}, new().is_contiguous(memory_format=torch.channels_last_3d), pad().is_contiguous(memory_format=torch.channels_last_3d))
