"""The stem convolution with its input channels padded to 8 or not, at the shapes the recipes train and predict on
(hippocampus and demo at 16 output channels, ISLES and BraTS at 32): forward and forward + backward medians (ms).

Run from the repository root: python benchmarks/results/session31/stem_recipe_shapes.py THREADS
Alternating calls, 7 rounds each. Outputs: stem_recipe_shapes_{1,2}threads.txt."""
import sys
sys.path[:0] = ["src", "."]
import torch
import torch.nn.functional as F
from benchmarks.common import interleaved
from factorseg.models.layers.conv import channels_last
torch.set_num_threads(int(sys.argv[1]))
SHAPES = [  # name, input channels, output channels, batch, spatial
    ("hippocampus train", 1, 16, 4, (40, 56, 40)),
    ("hippocampus predict", 1, 16, 2, (40, 56, 40)),
    ("demo train", 4, 16, 4, (24, 24, 24)),
    ("demo predict", 4, 16, 4, (24, 24, 24)),
    ("isles22 train", 2, 32, 4, (64, 64, 64)),
    ("brats train", 4, 32, 1, (128, 128, 128)),
    ("4 ch, batch 1, 64^3", 4, 32, 1, (64, 64, 64)),
]
for name, cin, cout, b, spatial in SHAPES:
    conv = torch.nn.Conv3d(cin, cout, 3, padding=1)
    x = channels_last(torch.randn(b, cin, *spatial))
    extra = -cin % 8

    def fb(f):
        def g():
            conv.weight.grad = None
            y = f()
            y.backward(torch.ones_like(y))
        return g

    pad = lambda: F.conv3d(channels_last(F.pad(x, (0, 0, 0, 0, 0, 0, 0, extra))),
                           F.pad(conv.weight, (0, 0, 0, 0, 0, 0, 0, extra)), conv.bias, 1, 1)
    plain = lambda: channels_last(conv(x))
    t = interleaved({"pad": fb(pad), "plain": fb(plain)}, 7, torch.device("cpu"))
    with torch.no_grad():
        tf = interleaved({"pad": pad, "plain": plain}, 7, torch.device("cpu"))
    print(f"{sys.argv[1]} threads, {name} ({cin} -> {cout} ch, batch {b}, {'x'.join(map(str, spatial))}): forward "
          f"padded/plain {tf['pad'].median * 1e3:6.1f}/{tf['plain'].median * 1e3:6.1f} ms, forward + backward "
          f"{t['pad'].median * 1e3:6.1f}/{t['plain'].median * 1e3:6.1f} ms", flush=True)
