"""Dataset loading and transforms on the shared real MRI (skipped via the ``shared_data`` fixture when absent)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from factorseg.data.formats import detect_format, load_dataset
from factorseg.data.labels import LABEL_SPECS
from factorseg.data.transforms import TransformConfig, train_transforms, val_transforms


def test_hippocampus_msd(shared_data: Path) -> None:
    info = load_dataset(shared_data / "hippocampus")
    assert info.format == "msd" and len(info.channels) == 1
    assert info.labels.mode == "classes" and info.labels.values == (0, 1, 2)
    assert len(info.cases) == 200 and not info.test_cases
    case = info.cases[0]
    label = np.asarray(nib.load(case["label"]).dataobj)
    info.labels.validate(label, case["label"])
    data = val_transforms(TransformConfig(), info.labels)(case)
    assert data["image"].shape[0] == 1
    assert data["label"].shape == (1, *data["image"].shape[1:])
    assert set(torch.unique(data["label"]).tolist()) == {0, 1, 2}


def test_brats2015_regions_from_rounded_float_labels(shared_data: Path) -> None:
    assert detect_format(shared_data / "brats2015_examples") == "brats2015"
    info = load_dataset(shared_data / "brats2015_examples")
    assert info.channels == ("flair", "t1c") and info.labels == LABEL_SPECS["brats2015"]
    assert len(info.cases) == 6
    case = info.cases[0]
    stored = nib.load(case["label"]).get_fdata(dtype=np.float32)
    target = info.labels.to_target(stored)
    assert target.shape == (3, *stored.shape)
    values = np.rint(stored)
    np.testing.assert_array_equal(target[1].numpy(), (values > 0).astype(np.float32))  # WT: labels 1-4
    np.testing.assert_array_equal(target[2].numpy(), (values == 4).astype(np.float32))  # ET: label 4
    assert target[2].sum() > 0


@pytest.mark.parametrize("make", [train_transforms, val_transforms])
def test_isles22_flair_on_dwi_grid(shared_data: Path, make) -> None:
    info = load_dataset(shared_data / "isles22_sample", use_flair=True)
    assert info.format == "isles22" and info.channels == ("dwi", "adc", "flair")
    (case,) = info.cases
    dwi = nib.load(case["image"][0])
    assert nib.load(case["image"][2]).shape != dwi.shape  # FLAIR is on its own grid on disk
    cfg = TransformConfig(crop_foreground=False, roi_size=(112, 112, 73), num_samples=1)
    t = make(cfg, info.labels)
    if make is train_transforms:
        t.set_random_state(0)
        (data,) = t(case)
    else:
        data = t(case)
    assert data["image"].shape == (3, 112, 112, 73)
    assert data["label"].shape == (1, 112, 112, 73)
    assert set(torch.unique(data["label"]).tolist()) == {0, 1}
    # The resampled FLAIR covers the DWI's non-zero (head) region.
    head = data["image"][0] != 0
    assert (data["image"][2][head] != 0).float().mean() > 0.9
