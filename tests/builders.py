"""What the tests build and check again and again: a tiny bundle, a lying NIfTI header, a CLI refusal."""

from __future__ import annotations

import collections
import gzip
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from factorseg.bundles.format import save_bundle
from factorseg.cli import main
from factorseg.data.transforms import TransformConfig
from factorseg.models import create

CLASSES = {"mode": "classes", "names": ["background", "a", "b"], "values": [0, 1, 2], "convention": "custom"}


def tiny_bundle(path: Path, channels: int) -> Path:
    """A tiny untrained Swin Factorizer bundle with ``channels`` input channels and 3 classes."""
    model_cfg = {"name": "swin_factorizer", "in_channels": channels, "out_channels": 3, "widths": [8, 16],
                 "head_dim": 4, "window_size": 4, "deep_supervision": False}
    config = {
        "model": model_cfg,
        "labels": CLASSES,
        "transforms": TransformConfig(roi_size=(16, 16, 16), crop_foreground=False).to_dict(),
        "channels": [f"c{i}" for i in range(channels)],
        "inference": {"overlap": 0.0, "sw_batch_size": 1},
    }
    torch.manual_seed(0)
    kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
    return save_bundle(config, create("swin_factorizer", **kwargs), path)


def claiming_nifti(path: Path, shape: Sequence[int], dtype: object = np.float32, data: bytes = b"",
                   nifti2: bool = False, vox_offset: float | None = None) -> Path:
    """A header that claims ``shape`` voxels of ``dtype`` followed by only ``data`` (gzip-compressed for .nii.gz)."""
    header = (nib.Nifti2Header if nifti2 else nib.Nifti1Header)()
    header.set_data_dtype(dtype)
    header["dim"][:] = 1
    header["dim"][0] = len(shape)
    header["dim"][1 : 1 + len(shape)] = shape
    header["pixdim"][1:4] = 1.0
    header["vox_offset"] = (544 if nifti2 else 352) if vox_offset is None else vox_offset
    header.set_sform(np.eye(4), code=1)
    raw = header.binaryblock + bytes(4) + data
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder`` (none if it does not exist)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def refused(capsys: pytest.CaptureFixture, argv: list[str], fragments: Sequence[str], inputs: Sequence[Path] = (),
            output: Path | None = None, code: int = 2) -> str:
    """Run the CLI: one ``factorseg: error:`` line containing ``fragments``, nothing written, inputs unchanged."""
    inputs = [p for i in inputs for p in ([i] if i.is_file() else files_under(i))]
    before = {p: p.read_bytes() for p in inputs}
    capsys.readouterr()
    status = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == code, captured.err
    assert len(lines) == 1 and lines[0].startswith("factorseg: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    if output is not None:
        assert files_under(output) == [], f"left behind: {files_under(output)}"
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} was modified"
    return lines[0]


class AtenOps(TorchDispatchMode):
    """How many times each ATen op (by name, overloads together) runs inside the ``with`` block: which kernels a
    fast path took."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    @property
    def names(self) -> set[str]:
        return set(self.counts)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))
