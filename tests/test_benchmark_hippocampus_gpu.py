"""The GPU hippocampus campaign script: its step budget, and all three phases in CPU smoke mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks.hippocampus_gpu import fit_epochs

ROOT = Path(__file__).resolve().parents[1]


def test_the_slowest_run_sets_one_budget_for_all() -> None:
    # 4.5 min / (1.3 x 0.05 s x 100 steps) = 41.5 -> 41 epochs, whichever runs were faster
    assert fit_epochs([0.01, 0.05, 0.02], 4.5, 100) == 41
    assert fit_epochs([100.0], 1.0, 100) == 1  # at least one epoch
    with pytest.raises(ValueError):
        fit_epochs([], 4.5, 100)


def _msd_hippocampus(root: Path, cases: int = 10) -> Path:
    """A tiny MSD-layout stand-in for Task04: two labelled blobs (anterior 1, posterior 2) per scan."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    training = []
    for i in range(cases):
        shape = (34 + i % 3, 48, 33)
        label = np.zeros(shape, np.uint8)
        label[10:17, 12:24, 10:20] = 1
        label[18:25, 24:36, 12:22] = 2
        image = (label * 40.0 + rng.normal(100, 10, shape)).astype(np.float32)
        name = f"hippocampus_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Hippocampus", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": cases, "training": training, "test": []}))
    return root


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_campaign_smoke_mode_on_cpu(tmp_path: Path) -> None:
    data = _msd_hippocampus(tmp_path / "data")
    out, packed = tmp_path / "out", tmp_path / "packed"
    cmd = [sys.executable, "-m", "benchmarks.hippocampus_gpu", "--device", "cpu", "--smoke", "--threads", "1",
           "--data", str(data), "--out", str(out), "--pack", str(packed)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((packed / "results.json").read_text())
    assert results["plan"]["steps"] == 2 and set(results["plan"]["probe_step_seconds"]) == {
        "swin_factorizer_fold0", "segresnet_fold0"}
    runs = {(r["model"], r["fold"]): r for r in results["runs"]}
    assert set(runs) == {("swin_factorizer", 0), ("segresnet", 0)}
    for run in runs.values():
        assert run["curve"]["steps"] == 2 and run["eval"]["cases"] == 2  # 10 cases, 5 folds
    assert set(runs[("swin_factorizer", 0)]["nmf_iters"]) == {"0"} and "nmf_iters" not in runs[("segresnet", 0)]
    assert sorted(p.name for p in packed.iterdir()) == [
        "curves.png", "factorizer_bundles.tar", "logs.tar.gz", "plan.json", "results.json", "tables.md"]
    assert "| swin_factorizer | 0 | 2 |" in (packed / "tables.md").read_text()
