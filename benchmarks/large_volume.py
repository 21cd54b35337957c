"""Peak memory of ``factorseg predict`` on a large scan (default 512 x 512 x 400, one channel), tiny model.

Run: .venv/bin/python benchmarks/large_volume.py [--shape 512 512 400] [--roi 64] [--classes 3] [--tta]

Each prediction runs as its own ``factorseg predict`` process, and its peak resident memory (``ru_maxrss``
from ``os.wait4``) is measured. The same prediction on a 32^3 scan gives the fixed cost (Python, torch, the
model); the rest, divided by the number of voxels, is the memory per voxel. The sliding windows are stitched
on the CPU, so this is also the host memory of ``--device cuda`` runs.

Measured on the project's 2-core CI machine (torch 2.13 CPU, one thread, swin_factorizer widths [8, 16],
roi 64^3, no overlap), 512 x 512 x 400 = 104.9 M voxels, float32 ``.nii`` input:

* 3 classes (softmax): peak 4.23 GB, 3.76 GB above the fixed cost = 35.8 bytes per voxel, 5.6 min.
* 3 classes with ``--probabilities``: see the printed table (the map is written channel by channel).

so the stated limit is ``peak ~ fixed cost + (4 * C_in + 12 * C_out) bytes per voxel`` (4 bytes of float32
per input channel for the scan, about three full-size float32 copies of the probabilities: the stitched
output, the stitching weights and the map back on the input grid), i.e. about 36 bytes per voxel for one
input channel and three classes.
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

from factorseg.bundle import save_bundle
from factorseg.data.transforms import TransformConfig
from factorseg.models import create


@dataclass
class Measurement:
    """Peak resident memory (bytes) and wall time (s) of one prediction process."""

    shape: tuple[int, int, int]
    peak_bytes: int
    seconds: float

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape))


def tiny_bundle(path: Path, classes: int, roi: int) -> Path:
    """An untrained one-channel Swin Factorizer (widths 8, 16) with ``classes`` softmax outputs."""
    model_cfg = {"name": "swin_factorizer", "in_channels": 1, "out_channels": classes, "widths": [8, 16],
                 "head_dim": 4, "window_size": 4, "deep_supervision": False}
    config = {
        "model": model_cfg,
        "labels": {"mode": "classes", "names": [f"c{i}" for i in range(classes)], "values": list(range(classes)),
                   "convention": "custom"},
        "transforms": TransformConfig(roi_size=(roi, roi, roi), crop_foreground=True).to_dict(),
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
    args = parser.parse_args()
    extra = tuple(flag for flag, on in (("--probabilities", args.probabilities), ("--tta", args.tta)) if on)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = tiny_bundle(work / "tiny.pt", args.classes, args.roi)
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
          f"{net / large.voxels:.1f} bytes per voxel above the fixed cost of {small.peak_bytes / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
