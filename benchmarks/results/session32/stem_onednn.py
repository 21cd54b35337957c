"""The stem's convolution (4 or 1 -> 32 channels, 3^3, float32, channels-first and channels-last input) by
PyTorch's conv3d against oneDNN's directly (``torch.mkldnn_convolution``), medians of 7, ms, and whether they agree bit for bit: PyTorch
sends batch-1 inputs with batch x channels x depth x height <= 20,480 to its slow reference kernel.

    python benchmarks/results/session32/stem_onednn.py THREADS   # output: stem_onednn_{1,2}threads.txt
"""
import os
import sys
import time

import torch
torch.set_num_threads(int(sys.argv[1]))
def t(f, r=7):
    f(); ts=[]
    for _ in range(r):
        s=time.perf_counter(); f(); ts.append(time.perf_counter()-s)
    ts.sort(); return ts[r//2]*1e3
for layout in ("channels-first", "channels-last (the stem's input)"):
    for b, c, e in [(1, 4, 64), (1, 4, 96), (1, 4, 128), (2, 4, 64), (1, 1, 64), (4, 1, 40), (1, 4, 32)]:
        conv = torch.nn.Conv3d(c, 32, 3, padding=1, bias=False)
        x = torch.randn(b, c, e, e, e)
        if layout != "channels-first":
            x = x.contiguous(memory_format=torch.channels_last_3d)

        def onednn(x=x, conv=conv):  # type: ignore[no-untyped-def]
            return torch.mkldnn_convolution(x, conv.weight, None, conv.padding, conv.stride, conv.dilation, 1)

        with torch.no_grad():
            same = torch.equal(conv(x), onednn())
            print(f"{sys.argv[1]} threads, {layout}, {(b, c, e)}: conv {t(lambda: conv(x)):.1f} ms, "
                  f"oneDNN {t(onednn):.1f} ms, bit-equal {same}")
print("load", os.getloadavg())
