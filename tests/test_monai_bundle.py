"""MONAI bundle export: MONAI's own verify commands pass and ``monai.bundle run`` writes the masks that
``factorseg predict`` writes, in each scan's geometry (synthetic scans with awkward geometry; real
hippocampus scans with the shipped model when ../shared is there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from builders import CLASSES, refused, tiny_bundle
from factorseg.data.labels import get_label_spec
from factorseg.data.transforms import TransformConfig
from factorseg.models import create
from factorseg.bundles.format import save_bundle
from factorseg.cli import main

for _module in ("fire", "ignite", "jsonschema"):  # the `export` extra: MONAI's bundle CLI and its evaluator
    pytest.importorskip(_module)

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hippocampus" / "imagesTr"


def _monai(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=bundle, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def _export(model: str | Path, out: Path) -> Path:
    """``factorseg export --format monai-bundle`` (in this process: the CLI's own tests cover its start-up)."""
    assert main(["export", "-m", str(model), "--format", "monai-bundle", "-o", str(out)]) == 0
    return out


def _verify(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MONAI's checks of a bundle, as ``python -m monai.bundle verify_metadata`` / ``verify_net_in_out`` run them
    from the bundle's folder (in this process: ``monai.bundle run`` below is the subprocess a user starts)."""
    from monai.bundle import verify_metadata, verify_net_in_out

    with monkeypatch.context() as m:
        m.chdir(bundle)
        verify_metadata(meta_file="configs/metadata.json", filepath="configs/metadata_schema.json")
        verify_net_in_out("network_def", meta_file="configs/metadata.json", config_file="configs/inference.json")


def _agreement(model: str | Path, bundle: Path, scans: list[Path], tmp: Path) -> list[float]:
    """Fraction of voxels on which the bundle's and factorseg's masks agree, per scan (same affine required)."""
    data = tmp / "scans"
    data.mkdir(exist_ok=True)
    for scan in scans:
        link = data / scan.name
        if not link.exists():
            link.symlink_to(scan.resolve())
    _monai(bundle, "run", "--config_file", "configs/inference.json", "--dataset_dir", str(data),
           "--output_dir", str(tmp / "monai"))
    ours = tmp / "ours"
    result = subprocess.run([sys.executable, "-m", "factorseg", "predict", "-m", str(model), "-i",
                             *map(str, sorted(data.iterdir())), "-o", str(ours), "--no-progress"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    fractions = []
    for scan in sorted(data.iterdir()):
        mine, theirs = nib.load(ours / scan.name), nib.load(tmp / "monai" / scan.name)
        a, b = np.asarray(mine.dataobj), np.asarray(theirs.dataobj)
        assert a.shape == b.shape == nib.load(scan).shape[:3]
        np.testing.assert_allclose(theirs.affine, nib.load(scan).affine, atol=1e-4)
        fractions.append(float((a == b).mean()))
    return fractions


def _scans(folder: Path, count: int) -> list[Path]:
    """Scans with anisotropic spacing, an oblique LPS-like affine and odd sizes (the inversion must undo them)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        shape = (19 + i, 23, 17 + 2 * i)
        image = rng.normal(size=shape).astype(np.float32)
        image[4:12, 6:15, 5:11] += 3.0
        affine = np.diag([-1.2, -0.9, 2.0, 1.0])
        angle = 0.2
        rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        affine[:3, :3] = rot @ affine[:3, :3]
        affine[:3, 3] = [30.0, -12.0, 5.0]
        paths.append(folder / f"case_{i}.nii.gz")
        nib.save(nib.Nifti1Image(image, affine), paths[-1])
    return paths


def _regions_bundle(path: Path) -> Path:
    """A tiny untrained bundle with BraTS's nested sigmoid regions (TC, WT, ET -> values 1, 2, 4)."""
    labels = get_label_spec("brats2021")
    model_cfg = {"name": "swin_factorizer", "in_channels": 1, "out_channels": labels.num_outputs, "widths": [8, 16],
                 "head_dim": 4, "window_size": 4, "deep_supervision": False}
    config = {"model": model_cfg, "labels": labels.to_dict(),
              "transforms": TransformConfig(roi_size=(16, 16, 16), crop_foreground=True).to_dict(),
              "channels": ["t1"], "inference": {"overlap": 0.25, "sw_batch_size": 2, "blend": "gaussian"}}
    torch.manual_seed(1)
    return save_bundle(config, create("swin_factorizer", **{k: v for k, v in model_cfg.items() if k != "name"}), path)


@pytest.mark.parametrize("kind", ["classes", "regions"])
def test_bundle_verifies_and_reproduces_predict(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_bundle(tmp_path / "m.pt", 1) if kind == "classes" else _regions_bundle(tmp_path / "m.pt")
    bundle = _export(model, tmp_path / "bundle")
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()) == [
        "LICENSE", "configs/inference.json", "configs/metadata.json", "configs/metadata_schema.json",
        "docs/README.md", "models/model.pt"]
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "factorseg" in meta["required_packages_version"]
    out = meta["network_data_format"]["outputs"]["pred"]
    names = CLASSES["names"] if kind == "classes" else list(get_label_spec("brats2021").names)
    assert out["channel_def"] == {str(i): n for i, n in enumerate(names)}
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert {"preprocessing", "postprocessing", "inferer", "network_def"} <= set(config)
    assert torch.load(bundle / "models" / "model.pt", weights_only=True).keys() == \
        torch.load(model, weights_only=True)["state_dict"].keys()
    _verify(bundle, monkeypatch)
    fractions = _agreement(model, bundle, _scans(tmp_path / "src", 2), tmp_path)
    assert min(fractions) >= 0.999, fractions


def test_export_refuses_an_existing_folder_and_leaves_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tiny_bundle(tmp_path / "m.pt", 1)
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused(capsys, ["export", "-m", str(model), "--format", "monai-bundle", "-o", str(out)], ["exists", "--overwrite"])
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not list(tmp_path.glob(".bundle*"))


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason="needs ../shared/data/hippocampus")
def test_shipped_hippocampus_bundle_on_real_scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _export("hippocampus", tmp_path / "bundle")
    _verify(bundle, monkeypatch)
    scans = sorted(HIPPOCAMPUS.glob("hippocampus_*.nii.gz"))[:4]
    fractions = _agreement("hippocampus", bundle, scans, tmp_path)
    assert min(fractions) >= 0.999, fractions
