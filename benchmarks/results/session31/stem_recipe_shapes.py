"""The stem convolution with its input channels padded to 8 or not, at the shapes the recipes train and predict on
(hippocampus and demo at 16 output channels, ISLES and BraTS at 32): forward and forward + backward medians (ms).

Run from the repository root: python benchmarks/results/session31/stem_recipe_shapes.py THREADS
Alternating calls, 7 rounds each (session 25's ``time_stem``). Outputs: stem_recipe_shapes_{1,2}threads.txt."""
import runpy
import sys

import torch

time_stem = runpy.run_path("benchmarks/results/session25/stem_padding_shapes.py")["time_stem"]
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
    tf, t = time_stem(cin, cout, b, spatial, bias=True, repeats=7)
    print(f"{sys.argv[1]} threads, {name} ({cin} -> {cout} ch, batch {b}, {'x'.join(map(str, spatial))}): forward "
          f"padded/plain {tf['pad'] * 1e3:6.1f}/{tf['plain'] * 1e3:6.1f} ms, forward + backward "
          f"{t['pad'] * 1e3:6.1f}/{t['plain'] * 1e3:6.1f} ms", flush=True)
