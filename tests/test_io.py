"""Tests for factorseg.io: every malformed input gives a one-line InputError and is left untouched."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from builders import claiming_nifti

from factorseg import __version__
from factorseg.errors import InputError, join_problems
from factorseg.io import (
    CHECKPOINT_FORMAT,
    DEFAULT_MAX_VOXELS,
    Volume,
    atomic_path,
    atomic_write,
    check_regular_file,
    check_same_grid,
    load_checkpoint,
    max_voxels,
    read_header,
    read_image,
    save_checkpoint,
    save_nifti,
)

AFFINE = np.array([[1.0, 0, 0, -10], [0, 1.5, 0, -20], [0, 0, 2.0, 5], [0, 0, 0, 1]])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.Nifti1Image(data, affine).to_filename(path)
    return path


def _volume(shape: tuple[int, ...] = (6, 7, 8)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def _refused(path: Path, *fragments: str, expect_3d: bool = True) -> str:
    """Assert that read_image refuses ``path`` with a one-line message naming it, and leaves it unchanged."""
    before = _digest(path) if path.is_file() else None
    with pytest.raises(InputError) as info:
        read_image(path, expect_3d=expect_3d)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    if before is not None:
        assert _digest(path) == before
    return message


@pytest.mark.parametrize("name", ["img.nii", "img.nii.gz"])
def test_read_valid_image_roundtrip(tmp_path: Path, name: str) -> None:
    data = _volume()
    path = _write(tmp_path / name, data)
    digest = _digest(path)
    vol = read_image(path)
    assert isinstance(vol, Volume)
    assert vol.array.dtype == np.float32 and vol.array.shape == data.shape
    np.testing.assert_array_equal(vol.array, data)
    np.testing.assert_allclose(vol.affine, AFFINE)
    assert vol.spacing == pytest.approx((1.0, 1.5, 2.0))
    assert _digest(path) == digest


def test_read_applies_scaling_of_integer_data(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), AFFINE)
    img.header.set_slope_inter(0.5, 10.0)
    img.to_filename(tmp_path / "scaled.nii.gz")
    vol = read_image(tmp_path / "scaled.nii.gz")
    np.testing.assert_allclose(vol.array, np.arange(24).reshape(2, 3, 4) * 0.5 + 10.0)


def test_missing_path_and_folder(tmp_path: Path) -> None:
    _refused(tmp_path / "absent.nii.gz", "file not found")
    folder = tmp_path / "dir.nii.gz"
    folder.mkdir()
    _refused(folder, "is a folder")


def test_wrong_extension(tmp_path: Path) -> None:
    path = tmp_path / "image.mha"
    path.write_bytes(b"ObjectType = Image\n")
    _refused(path, "not a NIfTI file", ".nii.gz")


def test_empty_file(tmp_path: Path) -> None:
    for name in ("empty.nii", "empty.nii.gz"):
        (tmp_path / name).write_bytes(b"")
        _refused(tmp_path / name, "empty")


def test_text_file_named_nii_gz(tmp_path: Path) -> None:
    path = tmp_path / "notes.nii.gz"
    path.write_text("patient 7: flair missing\n")
    _refused(path, "not gzip-compressed")


def test_uncompressed_nifti_named_nii_gz(tmp_path: Path) -> None:
    raw = _write(tmp_path / "plain.nii", _volume()).read_bytes()
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(raw)
    _refused(path, "uncompressed NIfTI file named .nii.gz; rename it to .nii")


@pytest.mark.parametrize(
    ("index", "value", "fragment"),
    [
        (0, 9, "(must be 1 to 7)"),  # read byte-swapped: the standard detects endianness by dim[0]
        (2, 0, "empty dimensions"),
        (2, -4, "empty dimensions"),
    ],
)
def test_invalid_dims_in_header(tmp_path: Path, index: int, value: int, fragment: str) -> None:
    path = _write(tmp_path / "dims.nii", _volume())
    header = nib.load(path).header.copy()
    header["dim"][index] = value
    raw = bytearray(path.read_bytes())
    raw[:348] = header.binaryblock
    path.write_bytes(bytes(raw))
    _refused(path, "invalid NIfTI header", fragment)


def test_gzipped_text_is_not_nifti(tmp_path: Path) -> None:
    path = tmp_path / "text.nii.gz"
    path.write_bytes(gzip.compress(b"hello " * 200))
    _refused(path, "not a NIfTI file")


def test_uncompressed_text_named_nii(tmp_path: Path) -> None:
    path = tmp_path / "text.nii"
    path.write_text("x" * 600)
    _refused(path, "not a NIfTI file")


def test_truncated_gzip(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.nii.gz", np.random.default_rng(0).random((20, 20, 20), dtype=np.float32))
    raw = good.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    _refused(cut, "corrupt or truncated gzip")
    cut_header = tmp_path / "cut_header.nii.gz"
    cut_header.write_bytes(raw[:30])
    _refused(cut_header, "corrupt or truncated gzip")


def test_corrupt_gzip_stream(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.nii.gz", np.random.default_rng(1).random((20, 20, 20), dtype=np.float32))
    raw = bytearray(good.read_bytes())
    for i in range(len(raw) // 2, len(raw) - 16):  # garble the middle of the deflate stream
        raw[i] ^= 0x5A
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(raw))
    _refused(bad, "corrupt or truncated gzip")


def test_truncated_header_and_data_of_nii(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.nii", _volume((10, 10, 10)))
    raw = good.read_bytes()
    short_header = tmp_path / "short_header.nii"
    short_header.write_bytes(raw[:200])
    _refused(short_header, "truncated NIfTI header", "200 of 348")
    short_data = tmp_path / "short_data.nii"
    short_data.write_bytes(raw[:-1000])
    _refused(short_data, "truncated or unreadable voxel data")


def test_nan_and_inf_voxels_are_counted(tmp_path: Path) -> None:
    data = _volume()
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    path = _write(tmp_path / "nan.nii.gz", data)
    _refused(path, f"4 of {data.size} voxels are NaN or infinite")


def test_dimensionality(tmp_path: Path) -> None:
    _refused(_write(tmp_path / "flat.nii.gz", _volume((6, 7))), "is 2D", "expected a 3D volume")
    four = _write(tmp_path / "four.nii.gz", _volume((6, 7, 8, 3)))
    _refused(four, "is 4D with 3 volumes")
    vol4 = read_image(four, expect_3d=False)
    assert vol4.array.shape == (6, 7, 8, 3)
    single = read_image(_write(tmp_path / "single.nii.gz", _volume((6, 7, 8, 1))))
    assert single.array.shape == (6, 7, 8)


@pytest.mark.parametrize("pixdim", [(0.0, 1.0, 1.0), (1.0, -2.0, 1.0), (1.0, 1.0, np.nan)])
def test_absurd_voxel_size(tmp_path: Path, pixdim: tuple[float, float, float]) -> None:
    path = _write(tmp_path / "absurd.nii", _volume())
    header = nib.load(path).header.copy()
    header["pixdim"][1:4] = pixdim
    raw = bytearray(path.read_bytes())
    raw[:348] = header.binaryblock  # nibabel would repair the value on save, so patch the bytes
    path.write_bytes(bytes(raw))
    _refused(path, "absurd header", "pixdim")


def test_singular_affine(tmp_path: Path) -> None:
    affine = AFFINE.copy()
    affine[:3, 2] = affine[:3, 0]  # two voxel axes pointing the same way
    _refused(_write(tmp_path / "singular.nii.gz", _volume(), affine), "affine is singular")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "locked.nii.gz", _volume())

    def denied(name: object, *args: object, **kwargs: object) -> int:  # chmod cannot lock out root (CI), so simulate it
        raise PermissionError(13, "Permission denied", str(name))

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(InputError, match="locked.nii.gz: cannot be read \\(Permission denied\\)"):
        read_image(path)


def test_analyze_pair_header_named_nii(tmp_path: Path) -> None:
    path = _write(tmp_path / "pair.nii", _volume())
    raw = bytearray(path.read_bytes())
    raw[344:348] = b"ni1\0"
    path.write_bytes(bytes(raw))
    _refused(path, ".hdr/.img pair")


def test_nifti2_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "two.nii.gz"
    nib.Nifti2Image(_volume(), AFFINE).to_filename(path)
    np.testing.assert_array_equal(read_image(path).array, _volume())


# --- grids -------------------------------------------------------------------------------------------


def test_same_grid_gives_no_warning(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.nii.gz", _volume())
    nudged = AFFINE.copy()
    nudged[0, 3] += 1e-5
    b = _write(tmp_path / "b.nii.gz", _volume(), nudged)
    assert check_same_grid([a, b, read_image(a)]) == []


def test_sub_voxel_shift_warns(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.nii.gz", _volume())
    shifted = AFFINE.copy()
    shifted[1, 3] += 0.3  # 0.3 mm: less than half of the smallest voxel size (1 mm)
    b = _write(tmp_path / "b.nii.gz", _volume(), shifted)
    warnings = check_same_grid([a, b])
    assert len(warnings) == 1 and "b.nii.gz" in warnings[0] and "resampling" in warnings[0]


def test_same_box_other_orientation_and_resolution_warns(tmp_path: Path) -> None:
    ref = nib.Nifti1Image(_volume((6, 6, 6)), np.eye(4))
    flipped_affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped_affine[0, 3] = 5.0  # voxel i maps to x = 5 - i: the same voxel centres, listed backwards
    flipped = nib.Nifti1Image(_volume((6, 6, 6)), flipped_affine)
    half_res_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    half_res_affine[:3, 3] = 0.5  # 3x3x3 voxels of 2 mm covering the same 6 mm box
    half_res = nib.Nifti1Image(_volume((3, 3, 3)), half_res_affine)
    warnings = check_same_grid([ref, flipped, half_res])
    assert [w.split(":")[0] for w in warnings] == ["image 1", "image 2"]


def test_far_grids_are_refused(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.nii.gz", _volume())
    shifted = AFFINE.copy()
    shifted[2, 3] += 3.0
    b = _write(tmp_path / "b.nii.gz", _volume(), shifted)
    with pytest.raises(InputError, match=r"b.nii.gz: on a different grid from a.nii.gz .* 3.00 mm"):
        check_same_grid([a, b])
    c = _write(tmp_path / "c.nii.gz", _volume((6, 7, 9)))  # one slice more
    with pytest.raises(InputError, match="shape \\(6, 7, 9\\) vs \\(6, 7, 8\\)"):
        check_same_grid([a, c])
    # a caller that resamples anyway can widen the tolerance
    assert len(check_same_grid([a, b], max_shift_voxels=5.0)) == 1


def test_grid_check_validates_paths(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.nii.gz", _volume())
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("nope")
    with pytest.raises(InputError, match="not gzip-compressed"):
        check_same_grid([a, bad])


# --- atomic writes -----------------------------------------------------------------------------------


def test_atomic_write_bytes_and_refusal_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write(target, b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(InputError, match="already exists"):
        atomic_write(target, b"second")
    assert target.read_bytes() == b"first"
    atomic_write(target, b"second", overwrite=True)
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_failed_atomic_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "seg.nii.gz"

    def half_write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_write)
    assert list(tmp_path.iterdir()) == []
    # a failure while replacing an existing file keeps the old content
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        atomic_write(target, half_write, overwrite=True)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


def test_atomic_path_temp_name_and_interrupt(tmp_path: Path) -> None:
    target = tmp_path / "mask.nii.gz"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-") and tmp.name.endswith("-mask.nii.gz")
            tmp.write_bytes(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        with atomic_path(tmp_path / "missing" / "x.nii.gz"):
            pass
    with pytest.raises(FileNotFoundError, match="did not create"):
        with atomic_path(tmp_path / "never.txt"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_without_overwrite_does_not_clobber_a_racing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(InputError, match="already exists"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"ours")
            target.write_bytes(b"theirs")  # another process created the file meanwhile
    assert target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_save_nifti_roundtrip_and_header(tmp_path: Path) -> None:
    mask = (np.arange(24).reshape(2, 3, 4) % 3).astype(np.uint8)
    out = save_nifti(mask, AFFINE, tmp_path / "mask.nii.gz")
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), mask)
    np.testing.assert_allclose(img.affine, AFFINE)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    with pytest.raises(InputError, match="already exists"):
        save_nifti(mask, AFFINE, out)
    # with the header of a scaled int16 input, the saved mask keeps its values and the input's description
    source = nib.Nifti1Image(np.zeros((2, 3, 4), np.int16), AFFINE)
    source.header.set_slope_inter(2.0, 5.0)
    source.header["descrip"] = b"scanner X"
    source.header["cal_max"] = 3000.0
    out2 = save_nifti(mask, AFFINE, tmp_path / "mask2.nii", header=source.header, dtype=np.uint8)
    img2 = nib.load(out2)
    np.testing.assert_array_equal(img2.get_fdata(), mask)
    assert img2.header["descrip"].item() == b"scanner X" and float(img2.header["cal_max"]) == 0.0
    with pytest.raises(InputError, match="must end in .nii or .nii.gz"):
        save_nifti(mask, AFFINE, tmp_path / "mask.png")


# --- checkpoints -------------------------------------------------------------------------------------


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    state = {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.zeros(2)}
    config = {"name": "factorizer", "channels": [8, 16], "dropout": 0.1, "nested": {"k": 2, "flag": True}}
    path = save_checkpoint({"state_dict": state, "config": config}, tmp_path / "model.pt")
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == CHECKPOINT_FORMAT and loaded["factorseg_version"] == __version__
    assert loaded["config"] == config
    torch.testing.assert_close(loaded["state_dict"]["weight"], state["weight"])
    with pytest.raises(InputError, match="already exists"):
        save_checkpoint({"x": 1}, path)


def test_save_checkpoint_rejects_objects(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"checkpoint\['config'\]\['when'\] has type ndarray"):
        save_checkpoint({"config": {"when": np.zeros(2)}}, tmp_path / "bad.pt")
    assert list(tmp_path.iterdir()) == []


class _Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("legacy_pickle", [False, True])
def test_pickle_bearing_checkpoint_is_refused(tmp_path: Path, legacy_pickle: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format_version": CHECKPOINT_FORMAT, "state_dict": {}, "hook": _Exploit(marker)}
    if legacy_pickle:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    digest = _digest(path)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path}: is not a factorseg checkpoint or contains untrusted objects (refused to unpickle)"
    )
    assert not marker.exists()
    assert _digest(path) == digest


def test_not_a_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights")
    with pytest.raises(InputError, match="refused to unpickle"):
        load_checkpoint(text)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        load_checkpoint(empty)
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(InputError, match="no format_version"):
        load_checkpoint(plain)


def test_incompatible_format_version(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save({"format_version": CHECKPOINT_FORMAT + 1, "factorseg_version": "9.0"}, path)
    with pytest.raises(InputError, match=r"format 2 \(written by factorseg 9.0\) is not supported.*upgrade"):
        load_checkpoint(path)


# --- real scans --------------------------------------------------------------------------------------


def test_real_scans_read_and_grid_checks(shared_data: Path) -> None:
    case = shared_data / "isles22_sample" / "sub-strokecase0009"
    dwi, adc, msk, flair = (case / f"sub-strokecase0009_ses-0001_{m}.nii.gz" for m in ("dwi", "adc", "msk", "flair"))
    digest = _digest(dwi)
    volume = read_image(dwi)
    assert volume.array.shape == (112, 112, 73) and volume.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert _digest(dwi) == digest
    # the mask's affine differs from the DWI's only by float rounding (~1e-8 mm)
    assert check_same_grid([dwi, adc, msk]) == []
    # ISLES'22 ships FLAIR on its native grid: not interchangeable with the DWI grid without resampling
    with pytest.raises(InputError, match="flair.nii.gz: on a different grid from .*dwi.nii.gz"):
        check_same_grid([dwi, flair])
    brats = shared_data / "brats2015_examples" / "brats_2013_pat0001_1"
    names = ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd", "brainmask", "OTMultiClass")
    volumes = [read_image(brats / f"{n}.nii.gz") for n in names]
    assert check_same_grid(volumes) == []
    assert set(np.unique(np.round(volumes[3].array)).tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}


# --- hostile sizes, data types and special files (checked from the header, before any voxel is read) ----------


@pytest.mark.parametrize("name", ["big.nii", "big.nii.gz"])
@pytest.mark.parametrize("nifti2", [False, True])
def test_header_promising_more_than_the_file_holds(tmp_path: Path, name: str, nifti2: bool) -> None:
    path = claiming_nifti(tmp_path / name, (512, 512, 512), np.float64, data=bytes(1000), nifti2=nifti2)
    for reader in (read_image, read_header):
        with pytest.raises(InputError) as info:
            reader(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message
        assert "truncated or unreadable voxel data" in message
        assert "512 x 512 x 512 float64 voxels (1.0 GiB)" in message


def test_gzip_bound_is_sound_for_the_most_compressible_data(tmp_path: Path) -> None:
    """All-zero voxels compress close to deflate's limit (1032:1) and must still be read."""
    zeros = np.zeros((128, 128, 128), np.float32)  # 8 MiB -> about 8 KiB of gzip at level 9
    path = tmp_path / "zeros.nii.gz"
    path.write_bytes(gzip.compress(_write(tmp_path / "zeros.nii", zeros).read_bytes(), compresslevel=9))
    assert path.stat().st_size * 1000 < zeros.nbytes
    assert read_image(path).array.shape == zeros.shape
    # a stream that really holds less than its (plausible) header says is truncated, found while streaming
    noise = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    short = claiming_nifti(tmp_path / "short.nii.gz", (64, 64, 64), np.float32, data=noise)
    with pytest.raises(InputError, match="truncated or unreadable voxel data .*the file holds 48.8 KiB"):
        read_image(short)
    read_header(short)  # the header alone is plausible


def test_gzip_members_and_trailing_data(tmp_path: Path) -> None:
    data = _volume()
    raw = gzip.decompress(_write(tmp_path / "one.nii.gz", data).read_bytes())
    members = tmp_path / "members.nii.gz"  # bgzip-style: several gzip members one after the other
    members.write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    np.testing.assert_array_equal(read_image(members).array, data)
    bomb = tmp_path / "bomb.nii.gz"  # a small image followed by 8 MiB of zeros inside the stream
    bomb.write_bytes(gzip.compress(raw + bytes(8 << 20)))
    with pytest.raises(InputError, match="holds much more data than the 6 x 7 x 8 float32 voxels"):
        read_image(bomb)
    padded = tmp_path / "padded.nii.gz"  # a little trailing data is read and ignored, as by nibabel
    padded.write_bytes(gzip.compress(raw + bytes(100)))
    np.testing.assert_array_equal(read_image(padded).array, data)


@pytest.mark.parametrize("offset,fragment", [(float("nan"), "vox_offset = nan"), (-8.0, "vox_offset = -8.0"),
                                             (1e30, "truncated or unreadable voxel data")])
def test_absurd_vox_offset(tmp_path: Path, offset: float, fragment: str) -> None:
    path = claiming_nifti(tmp_path / "offset.nii", (6, 7, 8), data=_volume().tobytes(), vox_offset=offset)
    _refused(path, fragment)


@pytest.mark.parametrize("offset", [0.0, 100.0, 351.0])
def test_vox_offset_inside_the_header(tmp_path: Path, offset: float) -> None:
    data = _volume()
    path = claiming_nifti(tmp_path / "inside.nii", data.shape, data=data.tobytes(order="F"), vox_offset=offset)
    _refused(path, f"vox_offset = {offset:g} lies inside the header", "from byte 352 on")
    fine = claiming_nifti(tmp_path / "fine.nii", data.shape, data=data.tobytes(order="F"), vox_offset=352)
    np.testing.assert_array_equal(read_image(fine).array, data)


@pytest.mark.parametrize("dtype,code,fragment", [
    (np.complex64, None, "complex numbers (complex64)"),
    (np.complex128, None, "complex numbers (complex128)"),
    ("RGB", None, "colour values (RGB24)"),
    ("RGBA", None, "colour values (RGBA32)"),
    (np.uint8, 1, "data type binary is not supported"),
    (np.uint8, 0, "data type none is not supported"),
    (np.uint8, 77, "unknown voxel data type code 77"),
])
def test_voxel_types_that_are_not_real_numbers(tmp_path: Path, dtype: object, code: int | None,
                                               fragment: str) -> None:
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape((6, 7, 8))
    header["vox_offset"] = 352
    if code is not None:
        header["datatype"] = code
    path = tmp_path / "typed.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + bytes(4) + bytes(16 * 6 * 7 * 8)))
    _refused(path, fragment)
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        read_header(path)


def test_voxel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "scan.nii.gz", _volume())  # 336 voxels
    monkeypatch.delenv("FACTORSEG_MAX_VOXELS", raising=False)
    assert max_voxels() == DEFAULT_MAX_VOXELS == 2**28
    monkeypatch.setenv("FACTORSEG_MAX_VOXELS", "335")
    _refused(path, "more than the limit of 335", "FACTORSEG_MAX_VOXELS=336")
    with pytest.raises(InputError, match="limit of 335"):
        read_header(path)
    for value, expected in (("336", 336), ("1_000", 1000), ("1e9", 10**9)):
        monkeypatch.setenv("FACTORSEG_MAX_VOXELS", value)
        assert max_voxels() == expected
    read_image(path)
    for bad in ("", "  "):
        monkeypatch.setenv("FACTORSEG_MAX_VOXELS", bad)
        assert max_voxels() == DEFAULT_MAX_VOXELS
    for bad in ("many", "0", "-1", "2.5", "inf", "nan"):
        monkeypatch.setenv("FACTORSEG_MAX_VOXELS", bad)
        with pytest.raises(InputError, match="FACTORSEG_MAX_VOXELS must be a positive whole number"):
            read_image(path)


def test_special_files_are_never_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.nii.gz"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.nii"
    zero.symlink_to("/dev/zero")
    folder = tmp_path / "folder.nii"
    folder.mkdir()
    broken = tmp_path / "broken.nii.gz"
    broken.symlink_to(tmp_path / "nothing")
    cases = {fifo: "is a FIFO (named pipe), not a regular file",
             zero: "is a character device (a link to /dev/zero), not a regular file",
             folder: "is a folder, expected a NIfTI file (.nii or .nii.gz)",
             broken: "file not found (broken symbolic link)"}
    for path, fragment in cases.items():
        for reader in (read_image, read_header, check_regular_file):
            with pytest.raises(InputError) as info:
                reader(path)
            assert str(info.value) == f"{path}: {fragment}"
        with pytest.raises(InputError, match="not a regular file|folder|not found"):
            check_same_grid([_write(tmp_path / "ok.nii.gz", _volume()), path])
    assert check_regular_file(_write(tmp_path / "real.nii", _volume())) > 352
    with pytest.raises(InputError, match="fifo.pt: is a FIFO"):
        os.mkfifo(tmp_path / "fifo.pt")
        load_checkpoint(tmp_path / "fifo.pt")
    with pytest.raises(InputError, match="is a folder, expected a checkpoint file"):
        load_checkpoint(tmp_path)


def test_grid_check_reads_headers_only(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.nii.gz", _volume())
    raw = bytearray(_write(tmp_path / "b.nii.gz", _volume()).read_bytes())
    raw[-12:-8] = bytes(4)  # corrupt the CRC: only a full read would notice
    (tmp_path / "b.nii.gz").write_bytes(bytes(raw))
    assert check_same_grid([a, tmp_path / "b.nii.gz"]) == []
    _refused(tmp_path / "b.nii.gz", "corrupt or truncated gzip")


def test_join_problems() -> None:
    assert join_problems(["a: bad"]) == "a: bad"
    assert join_problems(["a: bad", "a: bad", "b: worse"]) == "2 unusable inputs: a: bad; b: worse"
    many = [f"f{i}.nii: broken" for i in range(30)]
    line = join_problems(many)
    assert line.startswith("30 unusable inputs: f0.nii: broken; f1.nii: broken;")
    assert "; and 25 more: f5.nii, f6.nii," in line and line.endswith("f24.nii and 5 more")
    assert "\n" not in line


def test_gzip_named_nii(tmp_path: Path) -> None:
    path = tmp_path / "packed.nii"
    path.write_bytes(_write(tmp_path / "packed.nii.gz", _volume()).read_bytes())
    _refused(path, "is gzip-compressed although named .nii; rename it to .nii.gz")
