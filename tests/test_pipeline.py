"""End to end through the CLI: train -> predict -> evaluate on small synthetic data, and real scans."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from factorseg.inference.loading import load_model
from factorseg.bundles.format import save_bundle
from factorseg.cli import build_parser, main
from factorseg.data.synthetic import write_brats_dataset

TINY = [
    "-s", "model.widths=[8,16]", "-s", "model.head_dim=4", "-s", "model.window_size=4",
    "-s", "model.ds_heads=1", "-s", "model.deep_supervision=false",
    "-s", "transforms.roi_size=[32,32,32]", "-s", "transforms.num_samples=1",
    "-s", "inference.sw_batch_size=1",
]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_brats_dataset(root / "train", 5, seed=1, shape=(32, 32, 32))
    return root


def test_train_predict_evaluate_through_cli(synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    start = time.perf_counter()
    run = tmp_path / "run"
    code = main(["train", "-d", str(synthetic / "train"), "-o", str(run), "--recipe", "demo", "--epochs", "2",
                 "--steps-per-epoch", "2", "--batch-size", "1", "--val-interval", "1", "--num-workers", "0",
                 "--folds", "5", "--no-progress", *TINY])
    assert code == 0
    for name in ("config.yaml", "splits.json", "model_best.pt", "model_last.pt", "checkpoints/last.ckpt",
                 "logs/metrics.csv"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").iterdir())
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits) == 5
    val_case = splits[0]["val"][0]

    case_dir = synthetic / "train" / val_case
    scans = sorted(case_dir.glob("*_flair.nii.gz")) + sorted(case_dir.glob("*_t1.nii.gz")) + \
        sorted(case_dir.glob("*_t1ce.nii.gz")) + sorted(case_dir.glob("*_t2.nii.gz"))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for k, scan in enumerate(scans):  # nnU-Net style channel files
        shutil.copy(scan, inputs / f"{val_case}_{k:04d}.nii.gz")
    masks = tmp_path / "masks"
    assert main(["predict", "-m", str(run / "model_best.pt"), "-i", str(inputs), "-o", str(masks), "--no-progress",
                 "--nmf-iters", "2"]) == 0
    out = nib.load(masks / f"{val_case}.nii.gz")
    ref = nib.load(case_dir / f"{val_case}_seg.nii.gz")
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 4}
    # Refuses to overwrite without --overwrite, and leaves the mask alone.
    before = (masks / f"{val_case}.nii.gz").read_bytes()
    assert main(["predict", "-m", str(run / "model_best.pt"), "-i", str(inputs), "-o", str(masks), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (masks / f"{val_case}.nii.gz").read_bytes() == before

    refs = tmp_path / "refs"
    refs.mkdir()
    shutil.copy(case_dir / f"{val_case}_seg.nii.gz", refs / f"{val_case}.nii.gz")
    scores = tmp_path / "scores"
    assert main(["evaluate", "-p", str(masks), "-r", str(refs), "--labels", "brats2021", "-o", str(scores)]) == 0
    summary = json.loads((scores / "summary.json").read_text())
    assert "dice/WT" in json.dumps(summary)
    assert (scores / "per_case.csv").read_text().count("\n") == 2
    assert time.perf_counter() - start < 120


def test_resume_requires_existing_run_and_refuses_reuse(synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "-d", str(synthetic / "train"), "-o", str(tmp_path / "none"), "--resume", "--no-progress"]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_help_is_complete() -> None:
    parser = build_parser()
    text = parser.format_help()
    commands = ["train", "predict", "evaluate", "explain", "export", "demo", "recipes"]
    for command in commands:
        assert command in text
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in commands:
        help_text = sub.choices[command].format_help()
        assert "Example" in help_text or command == "recipes", command
        for action in sub.choices[command]._actions:
            assert action.help, f"{command} {action.option_strings} has no help"


def test_cli_help_runs_as_a_program() -> None:
    result = subprocess.run([sys.executable, "-m", "factorseg.cli", "predict", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--nmf-iters" in result.stdout


def _tiny_bundle(path: Path, in_channels: int, labels: dict, roi: list[int]) -> Path:
    from factorseg.models import create

    config = {
        "model": {"name": "swin_factorizer", "in_channels": in_channels, "out_channels": 3, "widths": [8, 16],
                  "head_dim": 4, "window_size": 4},
        "labels": labels,
        "transforms": {"spacing": None, "orientation": "RAS", "roi_size": roi, "crop_foreground": False},
        "channels": [f"c{i}" for i in range(in_channels)],
        "inference": {"overlap": 0.25, "sw_batch_size": 1},
    }
    torch.manual_seed(0)
    kwargs = {k: v for k, v in config["model"].items() if k != "name"}
    model = create("swin_factorizer", **kwargs)
    from factorseg.data.transforms import TransformConfig

    config["transforms"] = TransformConfig.from_dict(config["transforms"]).to_dict()
    return save_bundle(config, model, path)


def test_predict_real_hippocampus_keeps_geometry(shared_data: Path, tmp_path: Path) -> None:
    from factorseg.data.formats import load_dataset

    info = load_dataset(shared_data / "hippocampus")
    bundle = _tiny_bundle(tmp_path / "m.pt", 1, info.labels.to_dict(), [32, 32, 32])
    case = info.cases[0]
    before = Path(case["image"][0]).read_bytes()
    assert main(["predict", "-m", str(bundle), "-i", case["image"][0], "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    out = nib.load(tmp_path / "out" / f"{Path(case['image'][0]).name.split('.')[0]}.nii.gz")
    src = nib.load(case["image"][0])
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 2}
    assert Path(case["image"][0]).read_bytes() == before
    assert load_model(bundle).labels.names == info.labels.names


def test_predict_real_brats2015_keeps_lps_geometry(shared_data: Path, tmp_path: Path) -> None:
    from factorseg.data.labels import get_label_spec

    case = sorted((shared_data / "brats2015_examples").glob("brats_*"))[0]
    bundle = _tiny_bundle(tmp_path / "m.pt", 2, get_label_spec("brats2015").to_dict(), [64, 64, 64])
    inputs = tmp_path / "in"
    inputs.mkdir()
    # A crop of the real scans (nibabel's slicer keeps the LPS affine consistent) keeps the test fast.
    for k, name in enumerate(["Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"]):
        nib.save(nib.load(case / name).slicer[80:150, 90:160, 60:100], inputs / f"case_{k:04d}.nii.gz")
    assert main(["predict", "-m", str(bundle), "-i", str(inputs), "-o", str(tmp_path / "out"), "--no-progress",
                 "--overlap", "0"]) == 0
    out = nib.load(tmp_path / "out" / "case.nii.gz")
    src = nib.load(inputs / "case_0000.nii.gz")
    assert nib.aff2axcodes(src.affine) != ("R", "A", "S")
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)


def test_shipped_hippocampus_model_predicts_offline(tmp_path: Path) -> None:
    from factorseg.inference.loading import shipped_models
    from factorseg.io import save_nifti

    assert "hippocampus" in shipped_models()
    scan = np.random.default_rng(0).normal(100, 20, (35, 50, 35)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    save_nifti(scan, affine, tmp_path / "scan.nii.gz")
    assert main(["predict", "--model", "hippocampus", "-i", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    out = nib.load(tmp_path / "out" / "scan.nii.gz")
    assert out.shape == (35, 50, 35) and set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 2}
