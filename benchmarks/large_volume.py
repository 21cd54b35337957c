"""Peak memory of ``factorseg predict`` on a large scan (default 512 x 512 x 400, one channel), tiny model.

Run: .venv/bin/python benchmarks/large_volume.py [--shape 512 512 400] [--roi 64] [--classes 3]
     [--probabilities] [--tta] [--no-crop]

Each prediction runs as its own ``factorseg predict`` process, and its peak resident memory (``ru_maxrss``
from ``os.wait4``) is measured. The same prediction on a 32^3 scan gives the fixed cost (Python, torch, the
model); the rest, divided by the number of voxels, is the memory per voxel. With ``--device cuda`` the windows
are still stitched on the CPU (only the scan and the windows go to the GPU), so host memory stays as here.

Measured on the project's 2-core machine (torch 2.13 CPU, one thread; swin_factorizer widths [8, 16], roi 64^3,
no overlap; uncompressed float32 ``.nii`` input; fixed cost about 0.55 GB):

| scan | classes | foreground crop | peak RSS | bytes / voxel above the fixed cost | wall |
|---|---|---|---|---|---|
| 512 x 512 x 400 (104.9 M voxels) | 3 | yes | 2.53 GB | 18.9 | 105 s |
| same, before this predictor was made memory-bounded | 3 | yes | 4.76 GB | 40.2 | 132 s |
| 256 x 256 x 200 | 2 / 8 | yes | | 16.9 / 48.7 | |
| 256 x 256 x 200 | 2 / 8 | no | | 18.2 / 42.0 | |

Stated limit (:func:`bytes_per_voxel_limit`, also in ``SegmentationPredictor``'s docstring): peak memory is
the fixed cost plus at most ``4 * C_in + 6 * C_out + 8`` bytes per voxel of the scan, i.e. 30 bytes per voxel
(3.1 GB above the fixed cost for 512 x 512 x 400) for one input channel and three classes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from factorseg.bundles.format import save_bundle
from factorseg.data.transforms import TransformConfig
from factorseg.models import create


def bytes_per_voxel_limit(in_channels: int, classes: int) -> int:
    """Stated bound on prediction memory above the fixed cost, in bytes per voxel of the scan.

    float32 scan channels (4 each), and about 1.5 float32 copies of the class probabilities at a time (the
    stitched output and, while it is mapped back onto the scan's grid, part of the result), plus stitching
    weights and the label map.
    """
    return 4 * in_channels + 6 * classes + 8


@dataclass
class Measurement:
    """Peak resident memory (bytes) and wall time (s) of one prediction process."""

    shape: tuple[int, int, int]
    peak_bytes: int
    seconds: float

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape))


def tiny_bundle(path: Path, classes: int, roi: int, crop_foreground: bool = True) -> Path:
    """An untrained one-channel Swin Factorizer (widths 8, 16) with ``classes`` softmax outputs."""
    model_cfg = {"name": "swin_factorizer", "in_channels": 1, "out_channels": classes, "widths": [8, 16],
                 "head_dim": 4, "window_size": 4, "deep_supervision": False}
    config = {
        "model": model_cfg,
        "labels": {"mode": "classes", "names": [f"c{i}" for i in range(classes)], "values": list(range(classes)),
                   "convention": "custom"},
        "transforms": TransformConfig(roi_size=(roi, roi, roi), crop_foreground=crop_foreground).to_dict(),
        "channels": ["t1"],
        "inference": {"overlap": 0.0, "sw_batch_size": 1, "blend": "constant"},
    }
    torch.manual_seed(0)
    return save_bundle(config, create("swin_factorizer", **{k: v for k, v in model_cfg.items() if k != "name"}), path)


def write_scan(path: Path, shape: tuple[int, int, int]) -> Path:
    """A head-like float32 phantom (an ellipsoid of smooth intensity in air), written slab by slab."""
    data = np.zeros(shape, dtype=np.float32)
    i, j = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape[:2]), indexing="ij")
    for k, z in enumerate(np.linspace(-1, 1, shape[2], dtype=np.float32)):
        r2 = i**2 + j**2 + (1.2 * z) ** 2
        data[:, :, k] = np.where(r2 < 0.8, 100 + 50 * np.cos(6 * i) * np.sin(5 * j + z), 0)
    nib.Nifti1Image(data, np.diag([0.5, 0.5, 0.5, 1.0])).to_filename(path)
    return path


def measure(bundle: Path, shape: tuple[int, int, int], work: Path, extra: tuple[str, ...] = ()) -> Measurement:
    """Write a scan of ``shape``, predict it in a fresh ``factorseg predict`` process, return its peak memory."""
    scan = write_scan(work / f"scan_{'x'.join(map(str, shape))}.nii", shape)
    out = work / f"out_{'x'.join(map(str, shape))}"
    argv = [sys.executable, "-m", "factorseg.cli", "predict", "-m", str(bundle), "-i", str(scan), "-o", str(out),
            "--no-progress", "--overwrite", *extra]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"prediction failed: {stderr[-2000:]}")
    scan.unlink()
    return Measurement(shape, int(usage.ru_maxrss) * 1024, seconds)  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--probabilities", action="store_true", help="also write the probability map")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (8x the compute)")
    parser.add_argument("--no-crop", action="store_true", help="no foreground crop: the whole volume is predicted")
    args = parser.parse_args()
    extra = tuple(flag for flag, on in (("--probabilities", args.probabilities), ("--tta", args.tta)) if on)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = tiny_bundle(work / "tiny.pt", args.classes, args.roi, crop_foreground=not args.no_crop)
        small = measure(bundle, (32, 32, 32), work, extra)
        large = measure(bundle, tuple(args.shape), work, extra)
    net = large.peak_bytes - small.peak_bytes
    print("| scan | voxels | peak RSS | above fixed cost | bytes / voxel | wall |")
    print("|---|---|---|---|---|---|")
    for m in (small, large):
        print(f"| {'x'.join(map(str, m.shape))} | {m.voxels / 1e6:.1f} M | {m.peak_bytes / 1e9:.2f} GB | "
              f"{(m.peak_bytes - small.peak_bytes) / 1e9:.2f} GB | "
              f"{(m.peak_bytes - small.peak_bytes) / m.voxels:.1f} | {m.seconds:.0f} s |")
    print(f"classes={args.classes} roi={args.roi}^3 extra={' '.join(extra) or '-'}: "
          f"{net / large.voxels:.1f} bytes per voxel above the fixed cost of {small.peak_bytes / 1e9:.2f} GB "
          f"(stated limit {bytes_per_voxel_limit(1, args.classes)})")


if __name__ == "__main__":
    main()
