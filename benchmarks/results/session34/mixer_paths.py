"""A block's mixer as the block runs it in training (its LayerNorm, the input as its own residual, channels-last),
training step and forward, sub-block vs window path, for 8-voxel sub-blocks (windows of 4 shifted by 2): the path
rule again. Both paths alternate in one process (medians of 15 calls after 3).

Run from the repository root, with the command's allocator settings in GLIBC_TUNABLES:
python benchmarks/results/session34/mixer_paths.py THREADS"""
import os
import statistics
import sys
import time

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

import factorseg.models.layers.mixer as MX  # noqa: E402
from factorseg.models.layers.mixer import NMFMixer  # noqa: E402
from factorseg.models.layers.nmf import NMFConfig  # noqa: E402

torch.set_num_threads(int(sys.argv[1]))
print("load", os.getloadavg(), "threads", sys.argv[1])
cases = [  # head_dim, C, batch, spatial
    (8, 16, 4, (40, 56, 40)), (8, 32, 4, (20, 28, 20)), (8, 64, 4, (10, 14, 10)), (4, 16, 1, (48, 48, 48)),
    (4, 32, 1, (48, 48, 48)),
]
for hd, c, b, sp in cases:
    torch.manual_seed(0)
    mixer = NMFMixer(c, 3, head_dim=hd, window_size=4, shifts=((0, 0, 0), (2, 2, 2)), nmf=NMFConfig(num_iters=5))
    norm = torch.nn.LayerNorm(c)
    x0 = torch.randn(b, *sp, c)

    def train() -> None:
        x = (x0 * 1.0).requires_grad_()
        mixer(x * 1.0, norm=norm, channels_last=True, add_input=True).square().mean().backward()

    def forward() -> None:
        with torch.no_grad():
            mixer(x0, norm=norm, channels_last=True, add_input=True)

    times = {(p, m): [] for p in ("subblocks", "windows") for m in ("train", "forward")}
    for rep in range(18):
        for (path, mode), got in times.items():
            MX.subblocks_pay = lambda ch, e, *a, path=path: path == "subblocks"
            start = time.perf_counter()
            (train if mode == "train" else forward)()
            if rep >= 3:
                got.append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"head_dim {hd} C {c:3d} C/Q {c / 8:4.1f} voxels {b * sp[0] * sp[1] * sp[2]:7d}: "
          f"train sub {med['subblocks', 'train']:7.2f} win {med['windows', 'train']:7.2f} "
          f"win/sub {med['windows', 'train'] / med['subblocks', 'train']:4.2f} | forward sub {med['subblocks', 'forward']:6.2f} "
          f"win {med['windows', 'forward']:6.2f} win/sub {med['windows', 'forward'] / med['subblocks', 'forward']:4.2f}")
