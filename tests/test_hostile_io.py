"""Hostile inputs through ``factorseg predict`` / ``explain`` / ``evaluate``: resource exhaustion, special files,
partial results, and how cases are named and grouped.

Every refusal must exit with status 2 and print exactly one ``factorseg: error:`` line (no traceback), write
nothing (the output folder stays absent or unchanged) and leave every input byte-identical. Forged headers are
refused from the header alone: a subprocess measures that refusing them keeps peak memory growth under 100 MB.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from builders import claiming_nifti, tiny_bundle

from factorseg.cli import main

SHAPE = (20, 18, 16)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("models")
    return {c: tiny_bundle(root / f"m{c}.pt", c) for c in (1, 2)}


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    """Fail instead of hanging forever if a FIFO or device is ever read (the bug this file guards against)."""
    def timeout(signum: int, frame: object) -> None:
        raise TimeoutError("hung reading a special file")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _scan(seed: int = 0, shape: Sequence[int] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1.0, 2.0, shape).astype(np.float32)


def _save(path: Path, data: np.ndarray) -> Path:
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    return path


def _forged(path: Path, shape: Sequence[int], dtype: object = np.float64, nifti2: bool = False,
                 data: bytes = b"") -> Path:
    """A forged header (float64 by default) followed by only ``data``."""
    return claiming_nifti(path, shape, dtype, data=data, nifti2=nifti2)


def _noise(n: int) -> bytes:
    return np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()


def _tree(paths: Sequence[Path]) -> dict[Path, str]:
    """Hash of every regular file under ``paths`` (special files are listed, never read)."""
    out: dict[Path, str] = {}
    for root in paths:
        items = [root] if not root.is_dir() or root.is_symlink() else sorted(root.rglob("*"))
        for p in items:
            if p.is_symlink() or not p.exists():
                out[p] = f"link -> {os.readlink(p)}" if p.is_symlink() else "missing"
            elif p.is_file():
                out[p] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[p] = "special" if not p.is_dir() else "folder"
    return out


def _refused(capsys: pytest.CaptureFixture, argv: list[str], fragments: Sequence[str], inputs: Sequence[Path],
             output: Path) -> str:
    """Run the CLI: exit 2, one stderr line with ``fragments``, no traceback, output unchanged, inputs unchanged."""
    before, out_before = _tree(inputs), _tree([output]) if output.exists() else None
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("factorseg: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    if out_before is None:
        assert not output.exists(), f"left behind: {sorted(output.rglob('*')) if output.is_dir() else output}"
    else:
        assert _tree([output]) == out_before
    assert _tree(inputs) == before
    return lines[0]


def _predict(model: Path, inputs: Sequence[Path], out: Path, *extra: str) -> list[str]:
    return ["predict", "-m", str(model), "-i", *map(str, inputs), "-o", str(out), "--no-progress", *extra]


# ---------------------------------------------------------------- 1. resource exhaustion before any check
FORGED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "gz, 512^3 float64 in 60 bytes": (lambda d: _forged(d / "s.nii.gz", (512,) * 3), "at most"),
    "gz, 30000^3 float32": (lambda d: _forged(d / "s.nii.gz", (30000,) * 3, np.float32), "at most"),
    "gz, NIfTI-2 2^40 x 2^40 x 2^20": (lambda d: _forged(d / "s.nii.gz", (2**40, 2**40, 2**20), nifti2=True),
                                       "at most"),
    "gz, 4D with 32767 volumes": (lambda d: _forged(d / "s.nii.gz", (20, 18, 16, 32767), np.int16), "at most"),
    "gz, 2 MiB of zeros claiming 4 GiB": (lambda d: _forged(d / "s.nii.gz", (1024, 1024, 1024), np.float32,
                                                            data=bytes(2 << 20)), "at most"),
    "gz, 100 KB of noise claiming 8 MiB (within the deflate bound)": (
        lambda d: _forged(d / "s.nii.gz", (128, 128, 128), np.float32, data=_noise(100_000)), "file holds 97.7 KiB"),
    "nii, 512^3 float64 header only": (lambda d: _forged(d / "s.nii", (512,) * 3), "the file holds 0 bytes"),
    "nii, 256^3 int16 with 1000 bytes": (lambda d: _forged(d / "s.nii", (256,) * 3, np.int16, data=bytes(1000)),
                                         "the file holds 1000 bytes"),
    "nii, NIfTI-2 huge": (lambda d: _forged(d / "s.nii", (2**62, 3, 3), np.uint8, nifti2=True), "file holds"),
}


@pytest.mark.parametrize("name", list(FORGED))
def test_forged_size_is_refused_from_the_header(name: str, models: dict[int, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    make, fragment = FORGED[name]
    scan = make(tmp_path)
    _refused(capsys, _predict(models[1], [scan], tmp_path / "out"),
             (scan.name, "truncated or unreadable voxel data", "the header describes", fragment),
             [scan], tmp_path / "out")


def test_voxel_limit_is_documented_and_can_be_raised(models: dict[int, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    scans = [_save(tmp_path / "s.nii.gz", _scan()), _save(tmp_path / "t.nii", _scan(1))]
    out = tmp_path / "out"
    monkeypatch.setenv("FACTORSEG_MAX_VOXELS", "5000")
    line = _refused(capsys, _predict(models[1], scans, out), ("more than the limit of 5,000",
                    "FACTORSEG_MAX_VOXELS=5760", "2 unusable inputs", "s.nii.gz", "t.nii"), scans, out)
    assert "20 x 18 x 16 float32 voxels" in line
    for bad in ("lots", "0", "-3", "1.5"):
        monkeypatch.setenv("FACTORSEG_MAX_VOXELS", bad)
        _refused(capsys, _predict(models[1], scans, out), ("FACTORSEG_MAX_VOXELS must be a positive",), scans, out)
    monkeypatch.setenv("FACTORSEG_MAX_VOXELS", "5_760")
    assert main(_predict(models[1], scans, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["s.nii.gz", "t.nii.gz"]


def _typed(dtype: object, code: int | None = None) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        header = nib.Nifti1Header()
        header.set_data_dtype(dtype)
        header.set_data_shape(SHAPE)
        header.set_sform(np.eye(4), code=1)
        header["vox_offset"] = 352
        if code is not None:
            header["datatype"] = code
        itemsize = max(int(header["bitpix"]) // 8, 1)
        path = d / "scan.nii.gz"
        path.write_bytes(gzip.compress(header.binaryblock + bytes(4) + bytes(itemsize * int(np.prod(SHAPE)))))
        return path
    return make


DTYPES = {
    "complex64": (_typed(np.complex64), "complex numbers (complex64)"),
    "complex128": (_typed(np.complex128), "complex numbers (complex128)"),
    "complex256": (_typed(np.complex128, code=2048), "complex numbers (complex256)"),
    "RGB24": (_typed("RGB"), "colour values (RGB24)"),
    "RGBA32": (_typed("RGBA"), "colour values (RGBA32)"),
    "binary": (_typed(np.uint8, code=1), "voxel data type binary is not supported"),
    "unknown code": (_typed(np.uint8, code=999), "unknown voxel data type code 999"),
}


@pytest.mark.parametrize("name", list(DTYPES))
def test_non_real_voxel_types_are_refused(name: str, models: dict[int, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    make, fragment = DTYPES[name]
    scan = make(tmp_path)
    _refused(capsys, _predict(models[1], [scan], tmp_path / "out"), ("scan.nii.gz", fragment), [scan],
             tmp_path / "out")


def _fifo(d: Path) -> Path:
    os.mkfifo(d / "scan.nii.gz")
    return d / "scan.nii.gz"


def _dev_zero(d: Path) -> Path:
    (d / "scan.nii.gz").symlink_to("/dev/zero")
    return d / "scan.nii.gz"


def _socket(d: Path) -> Path:
    path = d / "scan.nii.gz"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return path


def _folder_named_scan(d: Path) -> Path:
    (d / "scan.nii.gz").mkdir()
    _save(d / "scan.nii.gz" / "inner.nii.gz", _scan())
    return d / "scan.nii.gz"


def _broken_link(d: Path) -> Path:
    (d / "scan.nii.gz").symlink_to(d / "gone.nii.gz")
    return d / "scan.nii.gz"


def _link_loop(d: Path) -> Path:
    (d / "scan.nii.gz").symlink_to(d / "scan.nii.gz")
    return d / "scan.nii.gz"


SPECIAL = {
    "FIFO": (_fifo, "is a FIFO (named pipe), not a regular file"),
    "link to /dev/zero": (_dev_zero, "is a character device (a link to /dev/zero), not a regular file"),
    "socket": (_socket, "is a socket, not a regular file"),
    "folder named .nii.gz": (_folder_named_scan, "is a folder, expected a NIfTI file"),
    "broken link": (_broken_link, "(broken symbolic link)"),
    "link loop": (_link_loop, "cannot be read"),
}


@pytest.mark.parametrize("name", list(SPECIAL))
def test_special_file_given_to_predict(name: str, models: dict[int, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    make, fragment = SPECIAL[name]
    path = make(tmp_path)
    _refused(capsys, _predict(models[1], [path], tmp_path / "out"), ("scan.nii.gz", fragment), [path],
             tmp_path / "out")


@pytest.mark.parametrize("name", [n for n in SPECIAL if n != "folder named .nii.gz"])
def test_special_file_inside_an_input_folder(name: str, models: dict[int, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    good = _save(folder / "a_good.nii.gz", _scan())
    make, fragment = SPECIAL[name]
    make(folder)
    _refused(capsys, _predict(models[1], [folder], tmp_path / "out"), ("scan.nii.gz", fragment), [good],
             tmp_path / "out")


@pytest.mark.parametrize("name", ["FIFO", "link to /dev/zero", "socket"])
def test_special_file_given_to_explain_and_as_label(name: str, models: dict[int, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    make, fragment = SPECIAL[name]
    special = make(tmp_path)
    good = _save(tmp_path / "good.nii.gz", _scan())
    out = tmp_path / "explained"
    _refused(capsys, ["explain", "-m", str(models[1]), "-i", str(special), "-o", str(out)], (fragment,),
             [special, good], out)
    _refused(capsys, ["explain", "-m", str(models[1]), "-i", str(good), "-o", str(out), "--label", str(special)],
             (fragment,), [special, good], out)


def test_forged_header_given_to_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    _save(pred / "case.nii.gz", np.zeros(SHAPE, np.uint8))
    _forged(ref / "case.nii.gz", (30000,) * 3, np.uint8)
    _refused(capsys, ["evaluate", "-p", str(pred), "-r", str(ref), "--labels", "brats2021", "-o",
                      str(tmp_path / "scores")], ("case.nii.gz", "truncated or unreadable voxel data"),
             [pred, ref], tmp_path / "scores")


_PEAK_SCRIPT = r"""
import resource, sys
from pathlib import Path

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

from factorseg.errors import InputError
from factorseg.io import read_header, read_image
bundle, good, out, *hostile = sys.argv[1:]
read_image(good)
start = peak()
for path in hostile:
    for reader in (read_image, read_header):
        try:
            reader(path)
        except InputError:
            pass
        else:
            raise SystemExit(f"{path} was not refused")
after_io = peak()
from factorseg.cli import main
assert main(["predict", "-m", bundle, "-i", out + "_absent.nii.gz", "-o", out, "--no-progress"]) == 2  # warm up
warm = peak()
for path in hostile:
    assert main(["predict", "-m", bundle, "-i", path, "-o", out + "_refused", "--no-progress"]) == 2
print(start, after_io, warm, peak())
"""


def test_refusing_a_huge_header_needs_little_memory(models: dict[int, Path], tmp_path: Path) -> None:
    """Peak RSS growth of refusing headers that claim 1 GiB to 2^100 bytes stays under 100 MB."""
    hostile = [_forged(tmp_path / "a.nii.gz", (512,) * 3), _forged(tmp_path / "b.nii.gz", (30000,) * 3),
               _forged(tmp_path / "c.nii", (512,) * 3), _forged(tmp_path / "d.nii.gz", (2**40,) * 2 + (2**20,),
                                                                  nifti2=True),
               _forged(tmp_path / "e.nii.gz", (1024,) * 3, np.float32, data=bytes(8 << 20)),
               _forged(tmp_path / "f.nii.gz", (512,) * 3, np.float64, data=bytes(16 << 20)),
               _typed(np.complex128)(tmp_path)]
    good = _save(tmp_path / "good.nii.gz", _scan())
    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(models[1]), str(good), str(tmp_path / "out"),
                             *map(str, hostile)], capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    start, after_io, warm, peak = map(int, result.stdout.split()[-4:])
    assert after_io - start < 100e6, f"reading: {(after_io - start) / 1e6:.1f} MB"
    assert peak - warm < 100e6, f"predict: {(peak - warm) / 1e6:.1f} MB"
    print(f"peak RSS growth: read_image/read_header {(after_io - start) / 1e6:.1f} MB, "
          f"predict {(peak - warm) / 1e6:.1f} MB")


# ---------------------------------------------------------------- 2. partial or unclear results
def _nan(d: Path, name: str) -> Path:
    data = _scan(5)
    data[2, 3, 4] = np.nan
    return _save(d / name, data)


def _corrupt(d: Path, name: str) -> Path:
    path = _save(d / name, _scan(6))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = bytes(16)
    path.write_bytes(bytes(raw))
    return path


def _truncated(d: Path, name: str) -> Path:
    path = _save(d / name, _scan(7))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


BAD_MAKERS: dict[str, tuple[Callable[[Path, str], Path], str]] = {
    "nan": (_nan, "NaN or infinite"),
    "corrupt": (_corrupt, "corrupt or truncated gzip"),
    "truncated": (_truncated, "corrupt or truncated gzip"),
    "two_d": (lambda d, n: _save(d / n, _scan(shape=(20, 18))), "is 2D"),
    "four_d": (lambda d, n: _save(d / n, _scan(shape=(*SHAPE, 2))), "2 channel(s)"),
    "forged": (lambda d, n: _forged(d / n, (512,) * 3), "truncated or unreadable voxel data"),
    "complex": (lambda d, n: _typed(np.complex64)(d).rename(d / n) or d / n, "complex numbers"),
    "fifo": (lambda d, n: os.mkfifo(d / n) or d / n, "FIFO"),
}

BATCHES = [("nan",), ("corrupt",), ("forged", "nan"), ("two_d", "truncated", "fifo"),
           ("complex", "four_d", "nan", "corrupt"), tuple(BAD_MAKERS)]


@pytest.mark.parametrize("bad", BATCHES, ids=["+".join(b) for b in BATCHES])
def test_a_batch_with_bad_scans_writes_nothing_and_names_every_bad_one(
        bad: tuple[str, ...], models: dict[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    goods = [_save(folder / "a_good.nii.gz", _scan()), _save(folder / "z_good.nii", _scan(1))]
    made = [(BAD_MAKERS[k][0](folder, f"m_{k}.nii.gz"), BAD_MAKERS[k][1]) for k in bad]
    out = tmp_path / "out"
    ordered = sorted(made, key=lambda item: item[0].name)  # problems are listed in file order
    fragments = [p.name for p, _ in made] + [why for _, why in ordered[:5]]
    if len(bad) > 1:
        fragments.append(f"{len(bad)} unusable inputs")
    if len(bad) > 5:
        fragments.append(f"and {len(bad) - 5} more: ")
    line = _refused(capsys, _predict(models[1], [folder], out), fragments, goods + [p for p, _ in made], out)
    assert "good" not in line
    # once the bad scans are gone, the same command works: nothing was left to refuse a rerun
    for path, _ in made:
        path.unlink()
    assert main(_predict(models[1], [folder], out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_good.nii.gz", "z_good.nii.gz"]


def test_bad_file_given_beside_good_ones_writes_nothing(models: dict[int, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    good = _save(tmp_path / "good.nii.gz", _scan())
    bad = _nan(tmp_path, "bad.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("someone else's file")
    _refused(capsys, _predict(models[1], [good, bad], out), ("bad.nii.gz", "NaN"), [good, bad], out)


def test_channel_grids_of_every_case_are_checked_before_writing(models: dict[int, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "cases"
    folder.mkdir()
    far = np.eye(4)
    far[:3, 3] = 12.0
    for case, affine in (("a", np.eye(4)), ("b", np.eye(4)), ("c", far)):
        _save(folder / f"{case}_0000.nii.gz", _scan(1))
        nib.Nifti1Image(_scan(2), affine).to_filename(folder / f"{case}_0001.nii.gz")
    _refused(capsys, _predict(models[2], [folder], tmp_path / "out"),
             ("case c: c_0001.nii.gz: on a different grid from c_0000.nii.gz",), [folder], tmp_path / "out")


def test_explain_refusals_leave_nothing_they_created(models: dict[int, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    scan = _save(tmp_path / "scan.nii.gz", _scan())
    base = ["explain", "-m", str(models[1]), "-i", str(scan)]
    nested = tmp_path / "new" / "deeper" / "out"
    _refused(capsys, [*base, "-o", str(nested), "--blocks", "no.such.block"], ("unknown block(s) 'no.such.block'",),
             [scan], nested)
    assert not (tmp_path / "new").exists()
    _refused(capsys, [*base, "-o", str(nested), "--components", "0"], ("components",), [scan], nested)
    wrong = _save(tmp_path / "label.nii.gz", np.zeros((4, 4, 4), np.uint8))
    _refused(capsys, [*base, "-o", str(nested), "--label", str(wrong)], ("label.nii.gz", "differs"),
             [scan, wrong], nested)
    assert not (tmp_path / "new").exists()
    out = tmp_path / "out"
    assert main([*base, "-o", str(out), "--blocks", "encoder.0.0"]) == 0
    capsys.readouterr()
    (out / "components.json").unlink()
    # a second run without --overwrite finds the maps of the first: refused, the folder left as it was
    _refused(capsys, [*base, "-o", str(out), "--blocks", "encoder.0.0"], ("already exists (and 1 more)",),
             [scan], out)


# ---------------------------------------------------------------- 3. names, grouping and --overlap
def test_output_name_is_the_same_however_a_case_is_given(models: dict[int, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    scan = _save(folder / "case_0000.nii.gz", _scan())
    for how, inputs in (("file", [scan]), ("folder", [folder])):
        out = tmp_path / f"out_{how}"
        assert main(_predict(models[1], inputs, out)) == 0
        assert [p.name for p in out.iterdir()] == ["case.nii.gz"], how
    year = _save(tmp_path / "scan_2019.nii.gz", _scan(1))  # four digits that are not a channel suffix
    assert main(_predict(models[1], [year], tmp_path / "out_year")) == 0
    assert [p.name for p in (tmp_path / "out_year").iterdir()] == ["scan_2019.nii.gz"]
    # the same case given both ways at once is one case twice
    capsys.readouterr()
    _refused(capsys, _predict(models[1], [scan, tmp_path / "imagesTs"], tmp_path / "both"),
             ("case id 'case' occurs in more than one input",), [folder], tmp_path / "both")


def test_a_multichannel_case_given_as_channel_files(models: dict[int, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    d = tmp_path / "BraTS_007"
    d.mkdir()
    flair, t1 = _save(d / "BraTS_007_flair.nii.gz", _scan(1)), _save(d / "BraTS_007_t1.nii.gz", _scan(2))
    four = _save(tmp_path / "stacked.nii.gz", np.stack([_scan(1), _scan(2)], axis=-1))
    assert main(_predict(models[2], [flair, t1], tmp_path / "files")) == 0
    assert main(_predict(models[2], [four], tmp_path / "stacked")) == 0
    assert main(_predict(models[2], [t1, flair], tmp_path / "swapped")) == 0
    mask = np.asarray(nib.load(tmp_path / "files" / "BraTS_007.nii.gz").dataobj)
    np.testing.assert_array_equal(mask, np.asarray(nib.load(tmp_path / "stacked" / "stacked.nii.gz").dataobj))
    assert [p.name for p in (tmp_path / "swapped").iterdir()] == ["BraTS_007.nii.gz"]
    # names without a common start take the folder's name; nnU-Net names given one by one are grouped
    e = tmp_path / "patient9"
    e.mkdir()
    a, b = _save(e / "flair.nii", _scan(3)), _save(e / "t1.nii", _scan(4))
    assert main(_predict(models[2], [a, b], tmp_path / "plain")) == 0
    assert [p.name for p in (tmp_path / "plain").iterdir()] == ["patient9.nii.gz"]
    n0, n1 = _save(tmp_path / "x_0000.nii.gz", _scan(5)), _save(tmp_path / "x_0001.nii.gz", _scan(6))
    assert main(_predict(models[2], [n1, n0], tmp_path / "nnunet")) == 0
    assert [p.name for p in (tmp_path / "nnunet").iterdir()] == ["x.nii.gz"]
    capsys.readouterr()
    third = _save(tmp_path / "extra.nii.gz", _scan(7))
    _refused(capsys, _predict(models[2], [flair, t1, third], tmp_path / "three"),
             ("3 unusable inputs", "has 1 channel(s) but the model expects 2 (give one case as 2 channel files"),
             [flair, t1, third], tmp_path / "three")
    _refused(capsys, _predict(models[2], [flair, flair], tmp_path / "twice"), ("given twice",), [flair],
             tmp_path / "twice")


def test_overlap_that_cannot_act_warns_once(models: dict[int, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    small = [_save(tmp_path / f"s{i}.nii.gz", _scan(i, (12, 16, 10))) for i in range(2)]
    assert main(_predict(models[1], small, tmp_path / "out", "--overlap", "0.5")) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("factorseg: warning: --overlap 0.5 has no effect"), err
    assert "12 x 16 x 10 voxels, within a single 16 x 16 x 16 window" in lines[0]
    assert main(_predict(models[1], small, tmp_path / "out2")) == 0  # the recipe's overlap: nothing to warn about
    big = _save(tmp_path / "big.nii.gz", _scan(3))
    assert main(_predict(models[1], [big], tmp_path / "out3", "--overlap", "0.5")) == 0  # 20 > 16: it acts
    assert capsys.readouterr().err.strip() == ""
