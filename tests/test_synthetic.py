"""Tests for the synthetic BraTS-like generator: determinism, label structure, MRI contrasts and files."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from factorseg.data.synthetic import (
    ED,
    ET,
    MODALITIES,
    NCR,
    Tissue,
    brats_affine,
    generate_case,
    generate_phantom,
    write_brats_dataset,
)
from factorseg.errors import InputError

SEEDS = range(8)


@pytest.fixture(scope="module")
def phantoms() -> list:
    return [generate_phantom(seed) for seed in SEEDS]


def test_shapes_dtypes_and_values(phantoms: list) -> None:
    for ph in phantoms:
        assert ph.image.shape == (4, 64, 64, 64) and ph.image.dtype == np.float32
        assert ph.label.shape == (64, 64, 64) and ph.label.dtype == np.uint8
        assert set(np.unique(ph.label).tolist()) <= {0, NCR, ED, ET}
        assert np.all(np.isfinite(ph.image)) and ph.image.min() >= 0.0
        assert ph.image.reshape(4, -1).std(axis=1).min() > 0.0


def test_deterministic_for_a_seed() -> None:
    image_a, label_a = generate_case(5)
    image_b, label_b = generate_case(np.random.default_rng(5))
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(label_a, label_b)
    image_c, label_c = generate_case(6)
    assert not np.array_equal(label_a, label_c)
    assert np.abs(image_a - image_c).mean() > 0.05 * np.abs(image_a).mean()


def test_labels_match_tissue_map(phantoms: list) -> None:
    for ph in phantoms:
        for value, tissue in ((NCR, Tissue.NECROSIS), (ED, Tissue.EDEMA), (ET, Tissue.ENHANCING)):
            np.testing.assert_array_equal(ph.label == value, ph.tissue == tissue)
        assert not np.any((ph.label > 0) & ~ph.brain)


def test_tumour_parts_present_and_nested(phantoms: list) -> None:
    complete = 0
    for ph in phantoms:
        label = ph.label
        counts = {v: int(np.count_nonzero(label == v)) for v in (NCR, ED, ET)}
        assert counts[ED] > 0 and counts[ET] > 0
        complete += all(n >= 10 for n in counts.values())
        # necrosis lies strictly inside the tumour core: none of its 6-neighbours is edema or background
        outside_core = ~np.isin(label, (NCR, ET))
        assert not np.any(ndimage.binary_dilation(outside_core) & (label == NCR))
        # the core is wrapped in edema, except where it meets CSF or the brain surface
        core = np.isin(label, (NCR, ET))
        touches_background = ndimage.binary_dilation(label == 0) & core
        assert touches_background.sum() <= 0.2 * core.sum()
        # every tumour component has a core (the edema is not scattered around on its own)
        components, n = ndimage.label(label > 0)
        assert all(core[components == i].any() for i in range(1, n + 1))
    assert complete >= 0.75 * len(phantoms)


def _mean(ph, modality: str, tissue: Tissue) -> float:
    return float(ph.image[MODALITIES.index(modality)][ph.tissue == tissue].mean())


def test_mri_contrasts(phantoms: list) -> None:
    for ph in phantoms:
        normal = {t: ph.tissue == t for t in (Tissue.GREY_MATTER, Tissue.WHITE_MATTER)}
        flair = ph.image[MODALITIES.index("flair")]
        assert _mean(ph, "flair", Tissue.EDEMA) > 1.3 * max(flair[m].mean() for m in normal.values())
        assert _mean(ph, "t2", Tissue.EDEMA) > 1.3 * _mean(ph, "t2", Tissue.WHITE_MATTER)
        assert _mean(ph, "t1ce", Tissue.ENHANCING) > 1.2 * _mean(ph, "t1ce", Tissue.WHITE_MATTER)
        if np.count_nonzero(ph.tissue == Tissue.NECROSIS) >= 20:  # tiny cores are all partial volume
            assert _mean(ph, "t1ce", Tissue.ENHANCING) > 1.5 * _mean(ph, "t1ce", Tissue.NECROSIS)
            assert _mean(ph, "t1", Tissue.NECROSIS) < 0.8 * _mean(ph, "t1", Tissue.WHITE_MATTER)
            assert _mean(ph, "t2", Tissue.NECROSIS) > 1.3 * _mean(ph, "t2", Tissue.WHITE_MATTER)
        # CSF: suppressed on FLAIR, dark on T1, bright on T2 (relative to brain tissue)
        assert _mean(ph, "flair", Tissue.CSF) < 0.5 * _mean(ph, "flair", Tissue.WHITE_MATTER)
        assert _mean(ph, "t1", Tissue.CSF) < 0.6 * _mean(ph, "t1", Tissue.WHITE_MATTER)
        assert _mean(ph, "t2", Tissue.CSF) > 1.25 * _mean(ph, "t2", Tissue.GREY_MATTER)
        # white matter brighter than grey matter on T1, darker on T2
        assert _mean(ph, "t1", Tissue.WHITE_MATTER) > _mean(ph, "t1", Tissue.GREY_MATTER)
        assert _mean(ph, "t2", Tissue.WHITE_MATTER) < _mean(ph, "t2", Tissue.GREY_MATTER)


def test_head_has_skull_and_scalp_outside_brain(phantoms: list) -> None:
    ph = phantoms[0]
    assert ph.tissue[0, 0, 0] == Tissue.AIR and ph.tissue[32, 32, 32] != Tissue.AIR
    line = ph.tissue[32, :, 32]  # anterior-posterior line through the centre
    first = {t: int(np.argmax(line == t)) for t in (Tissue.SCALP, Tissue.SKULL)}
    first_brain = int(np.argmax(ph.brain[32, :, 32]))
    assert 0 < first[Tissue.SCALP] < first[Tissue.SKULL] < first_brain


def test_skull_strip_zeroes_outside_brain() -> None:
    ph = generate_phantom(3, skull_strip=True)
    assert np.all(ph.image[:, ~ph.brain] == 0)
    assert np.all(ph.image[:, ph.brain].mean(axis=1) > 0)
    np.testing.assert_array_equal(ph.label, generate_phantom(3).label)


def test_other_shapes_and_anisotropic_spacing() -> None:
    image, label = generate_case(1, shape=(48, 56, 40), spacing=(1.0, 1.0, 1.5))
    assert image.shape == (4, 48, 56, 40) and label.shape == (48, 56, 40)
    assert np.count_nonzero(label == ET) > 0
    with pytest.raises(InputError, match="3D shape"):
        generate_case(0, shape=(64, 64))
    with pytest.raises(InputError, match="positive spacing"):
        generate_case(0, spacing=0.0)


def test_generation_is_fast() -> None:
    generate_case(0)
    best = min(_timed(seed) for seed in (1, 2, 3))
    assert best < 0.5


def _timed(seed: int) -> float:
    start = time.perf_counter()
    generate_case(seed)
    return time.perf_counter() - start


def test_brats_affine_centres_volume() -> None:
    affine = brats_affine((64, 64, 64))
    centre = affine @ np.array([31.5, 31.5, 31.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0)
    np.testing.assert_allclose(np.diag(affine)[:3], 1.0)


def test_write_brats_dataset(tmp_path: Path) -> None:
    shape = (32, 32, 32)
    cases = write_brats_dataset(tmp_path / "brats", n_cases=2, seed=7, shape=shape)
    assert [c.name for c in cases] == ["BraTS2021_00000", "BraTS2021_00001"]
    for case in cases:
        expected = sorted(f"{case.name}_{m}.nii.gz" for m in (*MODALITIES, "seg"))
        assert sorted(p.name for p in case.iterdir()) == expected  # no temporary files left behind
        for modality in MODALITIES:
            img = nib.load(case / f"{case.name}_{modality}.nii.gz")
            assert img.shape == shape and img.get_data_dtype() == np.float32
            np.testing.assert_allclose(img.affine, brats_affine(shape))
            assert img.header.get_zooms() == (1.0, 1.0, 1.0)
        seg = nib.load(case / f"{case.name}_seg.nii.gz")
        assert seg.get_data_dtype() == np.uint8 and set(np.unique(seg.dataobj).tolist()) <= {0, 1, 2, 4}
    # case i does not depend on how many cases are written; files match the generator
    single = write_brats_dataset(tmp_path / "one", n_cases=1, seed=7, shape=shape)[0]
    for suffix in ("flair", "seg"):
        a = nib.load(cases[0] / f"BraTS2021_00000_{suffix}.nii.gz").get_fdata()
        b = nib.load(single / f"BraTS2021_00000_{suffix}.nii.gz").get_fdata()
        np.testing.assert_array_equal(a, b)
    image, label = generate_case(np.random.default_rng(np.random.SeedSequence(7).spawn(1)[0]), shape=shape)
    np.testing.assert_array_equal(nib.load(single / "BraTS2021_00000_seg.nii.gz").get_fdata(), label)
    np.testing.assert_allclose(nib.load(single / "BraTS2021_00000_t1ce.nii.gz").get_fdata(), image[2], rtol=1e-6)
    # existing files are refused unless overwrite is given
    with pytest.raises(InputError, match="already exists"):
        write_brats_dataset(tmp_path / "one", n_cases=1, seed=7, shape=shape)
    write_brats_dataset(tmp_path / "one", n_cases=1, seed=8, shape=shape, overwrite=True)
    with pytest.raises(InputError, match="at least 1"):
        write_brats_dataset(tmp_path / "none", n_cases=0)
