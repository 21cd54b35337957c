"""The stem convolution with its input channels padded to 8 (conv_padded_input before 2026-12-06) or not, per
input channels, batch and size: forward and forward + backward medians (ms).

Run from the repository root: python benchmarks/results/session25/stem_padding_sizes.py THREADS"""
import sys, time, torch
sys.path[:0] = ["src", "."]
from benchmarks.common import interleaved
import torch.nn.functional as F
from factorseg import allocator
allocator.tune()
from factorseg.models.layers.conv import channels_last
torch.set_num_threads(int(sys.argv[1]))
for cin, cout in [(4, 32), (2, 32)]:
    for b, s in [(1, 64), (1, 96), (1, 128), (2, 64), (4, 48)]:
        conv = torch.nn.Conv3d(cin, cout, 3, padding=1, bias=False)
        x = channels_last(torch.randn(b, cin, s, s, s))
        def fb(f):
            def g():
                conv.weight.grad = None
                y = f(); y.backward(torch.ones_like(y))
            return g
        extra = -cin % 8
        pad = lambda: F.conv3d(channels_last(F.pad(x, (0, 0, 0, 0, 0, 0, 0, extra))), F.pad(conv.weight, (0, 0, 0, 0, 0, 0, 0, extra)), None, 1, 1)
        plain = lambda: conv(x)
        t = interleaved({"pad": fb(pad), "plain": fb(plain)}, 7, torch.device("cpu"))
        with torch.no_grad():
            tf = interleaved({"pad": pad, "plain": plain}, 7, torch.device("cpu"))
        print(f"cin {cin} cout {cout} b {b} {s}^3: fwd pad/plain {tf['pad'].median*1e3:6.1f}/{tf['plain'].median*1e3:6.1f}  f+b {t['pad'].median*1e3:6.1f}/{t['plain'].median*1e3:6.1f}")
