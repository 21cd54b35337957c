"""Transform pipelines: config, training patches and seeding, channel resampling, inversion to the input grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import affine_transform

from factorseg.data.labels import LABEL_SPECS, LabelSpec
from factorseg.data.transforms import (
    LoadCased,
    TransformConfig,
    infer_transforms,
    invert_prediction,
    train_transforms,
    val_transforms,
)
from factorseg.errors import InputError

# LPS axes with anisotropic spacing: a non-trivial input geometry.
LPS_AFFINE = np.array([[-1.5, 0, 0, 10.0], [0, -1.2, 0, 20.0], [0, 0, 3.0, -5.0], [0, 0, 0, 1]])


def save(path: Path, data: np.ndarray, affine: np.ndarray = LPS_AFFINE) -> str:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


@pytest.fixture
def brats_case(tmp_path: Path) -> dict:
    """Two channels on one grid plus a BraTS 2021 label inside the non-zero image region."""
    rng = np.random.default_rng(0)
    shape = (20, 16, 9)
    images = []
    for c in range(2):
        img = np.zeros(shape, np.float32)
        img[2:18, 2:14, 1:8] = rng.uniform(1, 2, (16, 12, 7)) + c
        images.append(save(tmp_path / f"img{c}.nii.gz", img))
    label = np.zeros(shape, np.uint8)
    label[2:18, 2:14, 1:8] = rng.choice([0, 1, 2, 4], (16, 12, 7))
    return {"id": "case", "image": images, "label": save(tmp_path / "seg.nii.gz", label)}


def small_cfg(**kw: object) -> TransformConfig:
    base = {"spacing": (1.0, 1.0, 1.0), "roi_size": (16, 16, 16), "num_samples": 2, "affine_prob": 0.5}
    base.update(kw)
    return TransformConfig(**base)


def test_config_dict_round_trip_and_validation() -> None:
    cfg = small_cfg(flip_axes=[0, 2])
    d = cfg.to_dict()
    assert d["roi_size"] == [16, 16, 16] and d["flip_axes"] == [0, 2]
    assert TransformConfig.from_dict(d) == cfg
    with pytest.raises(InputError, match="roi_sise"):
        TransformConfig.from_dict({"roi_sise": [8, 8, 8]})
    with pytest.raises(InputError, match="orientation"):
        TransformConfig(orientation="RAR")
    with pytest.raises(InputError, match="flip_prob"):
        TransformConfig(flip_prob=1.5)
    with pytest.raises(InputError, match="spacing"):
        TransformConfig(spacing=(1.0, 0.0, 1.0))


def test_train_patches_targets_and_seeding(brats_case: dict) -> None:
    spec = LABEL_SPECS["brats2021"]
    cfg = small_cfg(pos_neg_ratio=1000.0)  # nearly every patch centred on tumour

    def sample(seed: int) -> list[dict]:
        t = train_transforms(cfg, spec)
        t.set_random_state(seed)
        return t(brats_case)

    a, b, c = sample(0), sample(0), sample(1)
    assert len(a) == 2
    for s in a:
        assert s["image"].shape == (2, 16, 16, 16)
        assert s["label"].shape == (3, 16, 16, 16) and s["label"].dtype == torch.float32
        assert set(torch.unique(s["label"]).tolist()) <= {0.0, 1.0}
        assert s["label"][1].sum() > 0  # whole tumour present in a foreground-centred patch
        # nested regions survive augmentation: ET within TC within WT
        assert torch.all(s["label"][2] <= s["label"][0]) and torch.all(s["label"][0] <= s["label"][1])
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
    assert not torch.equal(a[0]["image"], c[0]["image"])


def test_train_without_augmentation_is_a_plain_crop(brats_case: dict) -> None:
    spec = LABEL_SPECS["brats2021"]
    cfg = small_cfg(augment=False, spacing=None, orientation=None, crop_foreground=False, num_samples=1)
    t = train_transforms(cfg, spec)
    t.set_random_state(0)
    (patch,) = t(brats_case)
    full = val_transforms(cfg, spec)(brats_case)
    # The patch is a sub-block of the full (padded) volume: find it by its image values.
    assert patch["image"].shape == (2, 16, 16, 16)
    padded = torch.nn.functional.pad(full["image"], (3, 4, 0, 0, 0, 0))  # z 9 -> 16 as SpatialPadd does
    windows = padded[0].unfold(0, 16, 1).unfold(1, 16, 1).unfold(2, 16, 1)
    hits = (windows == patch["image"][0]).flatten(3).all(-1).nonzero()
    assert len(hits) == 1


def test_val_is_deterministic_full_volume(brats_case: dict) -> None:
    spec = LABEL_SPECS["brats2021"]
    t = val_transforms(small_cfg(), spec)
    a, b = t(brats_case), t(brats_case)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert a["image"].shape[0] == 2 and a["label"].shape == (3, *a["image"].shape[1:])
    # The foreground crop equals the bounding box of non-zero voxels of the uncropped volume.
    uncropped = val_transforms(small_cfg(crop_foreground=False), spec)(brats_case)["image"].numpy()
    nz = np.argwhere(np.any(uncropped != 0, axis=0))
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(nz.min(0), nz.max(0)))
    assert a["image"].shape[1:] == uncropped[(0, *box)].shape
    fg_raw = uncropped[(slice(None), *box)] != 0
    np.testing.assert_array_equal(a["image"].numpy() != 0, fg_raw)
    np.testing.assert_allclose(a["image"].affine[:3, :3].numpy(), np.eye(3), atol=1e-6)  # RAS, 1 mm
    fg = a["image"][0] != 0
    np.testing.assert_allclose(a["image"][0][fg].mean().item(), 0.0, atol=1e-5)
    np.testing.assert_allclose(a["image"][0][fg].std(unbiased=False).item(), 1.0, atol=1e-4)


def test_unknown_label_value_is_reported(brats_case: dict, tmp_path: Path) -> None:
    label = np.full((20, 16, 9), 3, np.uint8)
    case = dict(brats_case, label=save(tmp_path / "bad.nii.gz", label))
    with pytest.raises(RuntimeError) as info:
        val_transforms(small_cfg(), LABEL_SPECS["brats2021"])(case)
    assert isinstance(info.value.__cause__, InputError)
    assert "bad.nii.gz" in str(info.value.__cause__) and "[3]" in str(info.value.__cause__)


def test_secondary_channel_is_resampled_onto_first_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    dwi = save(tmp_path / "dwi.nii.gz", rng.uniform(1, 2, (12, 10, 8)).astype(np.float32), np.diag([2.0, 2, 2, 1]))
    # FLAIR-like: finer in-plane, thick slices, shifted origin
    flair_aff = np.array([[0.8, 0, 0, -1.0], [0, 0.8, 0, 0.5], [0, 0, 5.0, -2.0], [0, 0, 0, 1]])
    flair_data = rng.uniform(0, 5, (30, 26, 5)).astype(np.float32)
    flair = save(tmp_path / "flair.nii.gz", flair_data, flair_aff)
    label = save(tmp_path / "msk.nii.gz", np.zeros((12, 10, 8), np.uint8), np.diag([2.0, 2, 2, 1]))
    out = LoadCased()({"image": [dwi, flair], "label": label})
    assert out["image"].shape == (2, 12, 10, 8) and out["label"].shape == (1, 12, 10, 8)
    # Independent reference: scipy linear interpolation at the DWI voxel centres mapped into FLAIR voxels.
    m = np.linalg.inv(flair_aff) @ np.diag([2.0, 2, 2, 1])
    ref = affine_transform(flair_data, m[:3, :3], m[:3, 3], output_shape=(12, 10, 8), order=1)
    idx = np.indices((12, 10, 8)).reshape(3, -1).T
    src = idx @ m[:3, :3].T + m[:3, 3]
    inside = np.all((src >= 0) & (src <= np.array(flair_data.shape) - 1), axis=1).reshape(12, 10, 8)
    assert inside.sum() > 100
    np.testing.assert_allclose(out["image"][1].numpy()[inside], ref[inside], atol=1e-4)


def test_label_on_another_grid_is_an_error(tmp_path: Path) -> None:
    img = save(tmp_path / "img.nii.gz", np.ones((8, 8, 8), np.float32))
    lab = save(tmp_path / "lab.nii.gz", np.zeros((8, 8, 6), np.uint8))
    with pytest.raises(InputError, match=r"lab\.nii\.gz.*\(8, 8, 6\)"):
        LoadCased()({"image": [img], "label": lab})
    with pytest.raises(InputError, match="not found"):
        LoadCased()({"image": [str(tmp_path / "missing.nii.gz")]})


def test_invert_label_map_exactly_to_input_grid(brats_case: dict) -> None:
    spec = LabelSpec.classes_from_values([0, 1, 2, 4])
    t = val_transforms(small_cfg(), spec)
    data = t(brats_case)
    assert data["label"].shape[1:] != (20, 16, 9)
    out = invert_prediction(data["label"], data, t, mode="nearest")
    original = nib.load(brats_case["label"])
    assert out.shape == (1, *original.shape) and out.dtype == torch.int64
    np.testing.assert_allclose(out.affine.numpy(), original.affine)
    # Nearest there and back from 1.5x1.2x3 mm to 1 mm is lossless for a label map.
    np.testing.assert_array_equal(spec.to_label(out), np.asarray(original.dataobj))


def test_invert_linear_prediction_from_infer_transforms(tmp_path: Path) -> None:
    shape = (20, 16, 9)
    i, j, k = np.indices(shape)
    ramp = (10 + 0.3 * i + 0.5 * j + 0.7 * k).astype(np.float32)
    path = save(tmp_path / "ramp.nii.gz", ramp)
    t = infer_transforms(small_cfg())
    data = t({"image": path})
    assert nib.aff2axcodes(data["image"].affine.numpy()) == ("R", "A", "S")
    pred = torch.cat([data["image"], -data["image"]]).as_tensor()  # a two-channel tensor derived from the image
    out = invert_prediction(pred[None], data, t, mode="linear")
    assert out.shape == (2, *shape)
    np.testing.assert_allclose(out.affine.numpy(), LPS_AFFINE)
    # The normalised image is a linear function of the original; linear resampling there and back keeps it so
    # (exactly away from the outermost voxels, where the forward resampling pads).
    inner = (slice(1, -1),) * 3
    x = ramp[inner].ravel()
    y = out[0].numpy()[inner].ravel()
    coef = np.polyfit(x, y, 1)
    np.testing.assert_allclose(np.polyval(coef, x), y, atol=1e-4)
    assert coef[0] > 0
    torch.testing.assert_close(out[1], -out[0])
    with pytest.raises(InputError, match="does not match"):
        invert_prediction(torch.zeros(1, 4, 4, 4), data, t)
