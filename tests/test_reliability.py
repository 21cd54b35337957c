"""Malformed and hostile inputs through the ``factorseg`` command.

Every refusal must exit with status 2 and one ``factorseg: error:`` line naming the problem (no traceback),
leave no output or temporary file behind, and leave every input byte-identical. Inputs are generated here:
corrupt and truncated gzip, truncated headers, NaN/Inf voxels, 2D and 4D files, mismatched grids, wrong
channel counts, labels outside the convention, pickle-bearing and incompatible checkpoints.
"""

from __future__ import annotations

import gzip
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from builders import tiny_bundle

from factorseg.inference.loading import load_model
from factorseg.cli import main
from factorseg.data.synthetic import write_brats_dataset
from factorseg.io import CHECKPOINT_FORMAT

SHAPE = (20, 18, 16)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("models")
    return {c: tiny_bundle(root / f"m{c}.pt", c) for c in (1, 2)}


def _scan(seed: int = 0, shape: Sequence[int] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1.0, 2.0, shape).astype(np.float32)


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.Nifti1Image(data, affine).to_filename(path)
    return path


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _refused(capsys: pytest.CaptureFixture, argv: list[str], fragments: Sequence[str], inputs: Sequence[Path],
             output: Path) -> str:
    """Run the CLI, assert a one-line refusal containing ``fragments``, no output, untouched inputs."""
    inputs = [p for i in inputs for p in ([i] if i.is_file() else _files(i))]
    before = {p: p.read_bytes() for p in inputs}
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("factorseg: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert _files(output) == [], f"left behind: {_files(output)}"
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} was modified"
    return lines[0]


def _predict(model: Path, inputs: Sequence[Path], out: Path, *extra: str) -> list[str]:
    return ["predict", "-m", str(model), "-i", *map(str, inputs), "-o", str(out), "--no-progress", *extra]


# ---------------------------------------------------------------- malformed scans given to `predict`
def _corrupt_gzip(d: Path) -> list[Path]:
    path = _save(d / "scan.nii.gz", _scan())
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 16] = bytes(16)  # zeroed bytes inside the deflate stream
    path.write_bytes(bytes(raw))
    return [path]


def _truncated_gzip(d: Path) -> list[Path]:
    path = _save(d / "scan.nii.gz", _scan())
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 2 // 3])
    return [path]


def _truncated_header(d: Path) -> list[Path]:
    path = _save(d / "scan.nii", _scan())
    path.write_bytes(path.read_bytes()[:200])
    return [path]


def _truncated_gzip_header(d: Path) -> list[Path]:
    raw = gzip.decompress(_save(d / "full.nii.gz", _scan()).read_bytes())[:300]
    (d / "full.nii.gz").unlink()
    path = d / "scan.nii.gz"
    path.write_bytes(gzip.compress(raw))
    return [path]


def _truncated_voxels(d: Path) -> list[Path]:
    path = _save(d / "scan.nii", _scan())
    path.write_bytes(path.read_bytes()[:-1000])
    return [path]


def _empty(d: Path) -> list[Path]:
    path = d / "scan.nii.gz"
    path.write_bytes(b"")
    return [path]


def _text_named_nifti(d: Path) -> list[Path]:
    path = d / "scan.nii.gz"
    path.write_text("patient name, date of birth\n")
    return [path]


def _gzipped_text(d: Path) -> list[Path]:
    path = d / "scan.nii.gz"
    path.write_bytes(gzip.compress(b"not an image at all, but long enough to hold a header " * 20))
    return [path]


def _png(d: Path) -> list[Path]:
    path = d / "scan.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return [path]


def _nan(d: Path) -> list[Path]:
    data = _scan()
    data[3, 4, 5] = np.nan
    return [_save(d / "scan.nii.gz", data)]


def _inf(d: Path) -> list[Path]:
    data = _scan()
    data[0, 0, :3] = np.inf
    return [_save(d / "scan.nii.gz", data)]


def _two_d(d: Path) -> list[Path]:
    return [_save(d / "scan.nii.gz", _scan(shape=(20, 18)))]


def _four_d_for_one_channel(d: Path) -> list[Path]:
    return [_save(d / "scan.nii.gz", _scan(shape=(*SHAPE, 3)))]


def _missing(d: Path) -> list[Path]:
    return [d / "absent.nii.gz"]


def _folder_without_scans(d: Path) -> list[Path]:
    folder = d / "scans"
    folder.mkdir()
    (folder / "notes.txt").write_text("nothing here")
    return [folder]


def _absurd_header(d: Path) -> list[Path]:
    img = nib.Nifti1Image(_scan(), AFFINE)
    img.header["pixdim"][1:4] = [0.0, 1.0, 1.0]
    path = d / "scan.nii"
    img.to_filename(path)
    raw = bytearray(path.read_bytes())  # nibabel fixes zero voxel sizes on save: write them back
    raw[80:84] = np.float32(0.0).tobytes()
    path.write_bytes(bytes(raw))
    return [path]


ONE_CHANNEL_CASES: dict[str, tuple[Callable[[Path], list[Path]], tuple[str, ...]]] = {
    "corrupt gzip": (_corrupt_gzip, ("scan.nii.gz", "corrupt or truncated gzip")),
    "truncated gzip": (_truncated_gzip, ("scan.nii.gz", "corrupt or truncated gzip")),
    "truncated header": (_truncated_header, ("scan.nii", "truncated NIfTI header")),
    "truncated header in gzip": (_truncated_gzip_header, ("scan.nii.gz", "truncated NIfTI header")),
    "truncated voxel data": (_truncated_voxels, ("scan.nii", "truncated or unreadable voxel data")),
    "empty file": (_empty, ("scan.nii.gz", "file is empty")),
    "text named .nii.gz": (_text_named_nifti, ("scan.nii.gz", "not gzip-compressed")),
    "gzipped text": (_gzipped_text, ("scan.nii.gz", "not a NIfTI file")),
    "png": (_png, ("scan.png", "not a NIfTI file")),
    "NaN voxel": (_nan, ("scan.nii.gz", "1 of 5760 voxels are NaN or infinite")),
    "Inf voxels": (_inf, ("scan.nii.gz", "3 of 5760 voxels are NaN or infinite")),
    "2D image": (_two_d, ("scan.nii.gz", "is 2D")),
    "4D for a one-channel model": (_four_d_for_one_channel, ("scan.nii.gz", "3 channel(s)", "expects 1")),
    "missing path": (_missing, ("absent.nii.gz", "not found")),
    "folder without scans": (_folder_without_scans, ("no NIfTI files",)),
    "zero voxel size": (_absurd_header, ("scan.nii", "voxel sizes")),
}


@pytest.mark.parametrize("name", list(ONE_CHANNEL_CASES))
def test_malformed_scan_is_refused(name: str, models: dict[int, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    make, fragments = ONE_CHANNEL_CASES[name]
    inputs = make(tmp_path)
    out = tmp_path / "out"
    _refused(capsys, _predict(models[1], inputs, out), fragments, inputs, out)
    assert not out.exists()


# ---------------------------------------------------------------- multi-channel cases
def _channels(d: Path, count: int, affines: Sequence[np.ndarray] | None = None,
              shapes: Sequence[Sequence[int]] | None = None) -> Path:
    """A folder with one nnU-Net style case ``case_XXXX.nii.gz`` of ``count`` channel files."""
    folder = d / "case"
    folder.mkdir()
    for k in range(count):
        shape = shapes[k] if shapes else SHAPE
        _save(folder / f"case_{k:04d}.nii.gz", _scan(k, shape), affines[k] if affines else AFFINE)
    return folder


def _shifted(mm: float) -> np.ndarray:
    affine = AFFINE.copy()
    affine[:3, 3] = mm
    return affine


MULTI_CHANNEL_CASES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "missing modality": (lambda d: _channels(d, 1), ("channel files [0]", "expected 0..1")),
    "extra modality": (lambda d: _channels(d, 3), ("channel files [0, 1, 2]", "expected 0..1")),
    "far affine": (lambda d: _channels(d, 2, [AFFINE, _shifted(12.0)]),
                   ("case_0001.nii.gz: on a different grid from case_0000.nii.gz", "register")),
    "different shape": (lambda d: _channels(d, 2, shapes=[SHAPE, (20, 18, 8)]),
                        ("case_0001.nii.gz: on a different grid", "(20, 18, 8) vs (20, 18, 16)")),
    "4D channel file": (lambda d: _channels(d, 2, shapes=[SHAPE, (*SHAPE, 2)]),
                        ("case_0001.nii.gz: is 4D with 2 volumes", "expected a single 3D volume")),
}


@pytest.mark.parametrize("name", list(MULTI_CHANNEL_CASES))
def test_malformed_multichannel_case_is_refused(name: str, models: dict[int, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    make, fragments = MULTI_CHANNEL_CASES[name]
    folder = make(tmp_path)
    out = tmp_path / "out"
    _refused(capsys, _predict(models[2], [folder], out), fragments, [folder], out)


def test_single_file_with_wrong_channel_count(models: dict[int, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    scan = _save(tmp_path / "scan.nii.gz", _scan())
    out = tmp_path / "out"
    _refused(capsys, _predict(models[2], [scan], out), ("scan.nii.gz", "1 channel(s)", "expects 2"), [scan], out)


def test_close_grid_is_resampled_with_a_one_line_warning(models: dict[int, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    folder = _channels(tmp_path, 2, [AFFINE, _shifted(0.3)])  # 0.3 mm: rounding-level disagreement
    before = {p: p.read_bytes() for p in _files(folder)}
    out = tmp_path / "out"
    assert main(_predict(models[2], [folder], out)) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("factorseg: warning: ")]
    assert len(warnings) == 1 and "case_0001.nii.gz" in warnings[0] and "resampling" in warnings[0]
    assert [p.name for p in _files(out)] == ["case.nii.gz"]
    assert {p: p.read_bytes() for p in _files(folder)} == before


def test_bad_case_in_a_batch_is_refused_before_any_output(models: dict[int, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    good = _save(folder / "a_good.nii.gz", _scan())
    bad = _save(folder / "b_bad.nii.gz", _scan(shape=(*SHAPE, 2)))
    out = tmp_path / "out"
    _refused(capsys, _predict(models[1], [folder], out), ("b_bad.nii.gz", "2 channel(s)"), [good, bad], out)


# ---------------------------------------------------------------- outputs: overwrite and inputs
def test_output_is_never_an_input_file(models: dict[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scan = _save(tmp_path / "scan.nii.gz", _scan())
    before = scan.read_bytes()
    code = main(_predict(models[1], [scan], tmp_path, "--overwrite"))
    err = capsys.readouterr().err
    assert code == 2 and "scan.nii.gz: is an input file" in err and len(err.strip().splitlines()) == 1
    assert scan.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def test_existing_output_needs_overwrite(models: dict[int, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    scan = _save(tmp_path / "scan.nii.gz", _scan())
    out = tmp_path / "out"
    assert main(_predict(models[1], [scan], out, "--probabilities")) == 0
    written = {p: p.read_bytes() for p in _files(out)}
    assert sorted(p.name for p in written) == ["scan.nii.gz", "scan_probabilities.nii.gz"]
    capsys.readouterr()
    (out / "scan.nii.gz").unlink()  # only the probability map is left: still refused
    assert main(_predict(models[1], [scan], out, "--probabilities")) == 2
    assert "scan_probabilities.nii.gz exists" in capsys.readouterr().err
    assert [p.name for p in _files(out)] == ["scan_probabilities.nii.gz"]
    assert main(_predict(models[1], [scan], out, "--probabilities", "--overwrite")) == 0
    assert {p.name for p in _files(out)} == {"scan.nii.gz", "scan_probabilities.nii.gz"}
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())


def test_output_path_is_a_file(models: dict[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scan = _save(tmp_path / "scan.nii.gz", _scan())
    target = tmp_path / "out"
    target.write_text("a file, not a folder")
    assert main(_predict(models[1], [scan], target)) == 2
    assert "out: exists and is not a folder" in capsys.readouterr().err
    assert target.read_text() == "a file, not a folder"


# ---------------------------------------------------------------- hostile and incompatible model files
class _Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_pickle_bearing_checkpoint_is_refused(suffix: str, models: dict[int, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / f"evil{suffix}"
    config = load_model(models[1]).config
    torch.save({"format_version": CHECKPOINT_FORMAT, "config": config, "state_dict": {}, "hyper_parameters":
                {"config": config}, "hook": _Exploit(marker)}, evil)
    scan = _save(tmp_path / "scan.nii.gz", _scan())
    out = tmp_path / "out"
    _refused(capsys, _predict(evil, [scan], out), (f"evil{suffix}", "refused to unpickle"), [evil, scan], out)
    assert not marker.exists()


def test_checkpoint_of_another_format_version(models: dict[int, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    raw = torch.load(models[1], weights_only=True)
    raw["format_version"] = CHECKPOINT_FORMAT + 1
    future = tmp_path / "future.pt"
    torch.save(raw, future)
    scan = _save(tmp_path / "scan.nii.gz", _scan())
    out = tmp_path / "out"
    _refused(capsys, _predict(future, [scan], out), ("future.pt", "not supported", "upgrade factorseg"),
             [future, scan], out)


def test_lightning_checkpoint_of_an_old_version(models: dict[int, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    config = dict(load_model(models[1]).config)
    del config["channels"]
    old = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": {"config": config}, "state_dict": {}}, old)
    scan = _save(tmp_path / "scan.nii.gz", _scan())
    out = tmp_path / "out"
    _refused(capsys, _predict(old, [scan], out), ("old.ckpt", "incompatible factorseg version", "channels"),
             [old, scan], out)


def test_bundle_whose_weights_do_not_fit(models: dict[int, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    raw = torch.load(models[1], weights_only=True)
    raw["config"]["model"]["widths"] = [8, 32]
    wrong = tmp_path / "wrong.pt"
    torch.save(raw, wrong)
    scan = _save(tmp_path / "scan.nii.gz", _scan())
    out = tmp_path / "out"
    _refused(capsys, _predict(wrong, [scan], out), ("wrong.pt", "weights do not fit"), [wrong, scan], out)


# ---------------------------------------------------------------- `train` on malformed datasets
@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_brats_dataset(root, 3, seed=2, shape=(16, 16, 16))
    return root


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-d", str(data), "-o", str(out), "--recipe", "demo", "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "1", "--num-workers", "0", "--folds", "3", "--no-progress",
            "-s", "model.widths=[8,16]", "-s", "model.head_dim=4", "-s", "model.deep_supervision=false",
            "-s", "transforms.roi_size=[16,16,16]", "-s", "transforms.num_samples=1", *extra]


def _rewrite(path: Path, change: Callable[[np.ndarray], None]) -> None:
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    change(data)
    nib.Nifti1Image(data, img.affine, img.header).to_filename(path)


@pytest.mark.parametrize("cache", ["true", "false"])
def test_training_labels_outside_the_convention(cache: str, dataset: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    seg = dataset / "BraTS2021_00002" / "BraTS2021_00002_seg.nii.gz"
    _rewrite(seg, lambda a: a.__setitem__((slice(2, 4),) * 3, 3))  # BraTS 2021 has no label 3
    out = tmp_path / "run"
    _refused(capsys, _train(dataset, out, "-s", f"data.cache={cache}"),
             ("BraTS2021_00002_seg.nii.gz", "label values [3]", "brats2021"), [dataset], out)
    assert not out.exists()


def test_training_nan_modality(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    t2 = dataset / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz"
    _rewrite(t2, lambda a: a.__setitem__((0, 0, 0), np.nan))
    out = tmp_path / "run"
    _refused(capsys, _train(dataset, out), ("BraTS2021_00001_t2.nii.gz", "NaN or infinite"), [dataset], out)


def test_training_corrupt_label_file(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    seg = dataset / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"
    seg.write_bytes(seg.read_bytes()[:-8])  # cut the gzip trailer (CRC and length)
    out = tmp_path / "run"
    _refused(capsys, _train(dataset, out), ("BraTS2021_00000_seg.nii.gz", "corrupt or truncated gzip"), [dataset], out)


def test_training_label_on_another_grid(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    seg = dataset / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"
    img = nib.load(seg)
    nib.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.array(
        [[1, 0, 0, 9], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])).to_filename(seg)
    out = tmp_path / "run"
    _refused(capsys, _train(dataset, out), ("BraTS2021_00001_seg.nii.gz: on a different grid",), [dataset], out)


BAD_TRAIN_SETTINGS = {
    "negative lr": (["--lr", "-1"], "train.lr must be a positive number"),
    "zero val interval": (["--val-interval", "0"], "train.val_interval must be an integer >= 1"),
    "negative workers": (["--num-workers", "-1"], "train.num_workers must be an integer >= 0"),
    "overlap of 1": (["-s", "inference.overlap=1.0"], "overlap must lie in [0, 1)"),
    "text epochs": (["-s", "train.epochs=many"], "train.epochs must be an integer >= 1, got 'many'"),
    "GPU without GPU": (["--accelerator", "gpu"], "training settings:"),
}


@pytest.mark.parametrize("name", list(BAD_TRAIN_SETTINGS))
def test_training_settings_are_checked_before_anything_is_written(name: str, dataset: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    extra, fragment = BAD_TRAIN_SETTINGS[name]
    if "gpu" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    _refused(capsys, _train(dataset, out, *extra), (fragment,), [dataset], out)
    assert not out.exists()


@pytest.mark.parametrize("extra,fragment", [
    (["--sw-batch-size", "0"], "sw_batch_size must be >= 1"),
    (["--nmf-iters", "-1"], "nmf_iters must be >= 0"),
    (["--device", "tpu:3"], "device 'tpu:3'"),
    (["--device", "cuda:7"], "device 'cuda:7'"),
])
def test_prediction_settings_are_checked(extra: list[str], fragment: str, models: dict[int, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    scan = _save(tmp_path / "scan.nii.gz", _scan())
    out = tmp_path / "out"
    _refused(capsys, _predict(models[1], [scan], out, *extra), (fragment,), [scan], out)


def test_resume_of_a_folder_that_is_not_a_run(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    _refused(capsys, _train(dataset, out, "--resume"), ("config.yaml not found",), [dataset], out)


# ---------------------------------------------------------------- memory on large scans
_PEAK_SCRIPT = """
import resource, sys
from factorseg.cli import main

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

bundle, small, large, out = sys.argv[1:]
assert main(["predict", "-m", bundle, "-i", small, "-o", out, "--no-progress"]) == 0
base = peak()
assert main(["predict", "-m", bundle, "-i", large, "-o", out, "--no-progress"]) == 0
print(base, peak())
"""


def test_prediction_memory_is_linear_and_bounded(tmp_path: Path) -> None:
    """Scaled-down ``benchmarks/large_volume.py``: peak memory above the fixed cost stays under the stated
    per-voxel bound (SegmentationPredictor's docstring) on a 192 x 192 x 128 scan, tiny model."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("large_volume", Path(__file__).parents[1] / "benchmarks" /
                                                  "large_volume.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("large_volume", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    bundle = bench.tiny_bundle(tmp_path / "tiny.pt", classes=3, roi=64)
    small = bench.write_scan(tmp_path / "small.nii", (32, 32, 32))
    large = bench.write_scan(tmp_path / "large.nii", (192, 192, 128))
    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(bundle), str(small), str(large),
                             str(tmp_path / "out")], capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    base, peak = map(int, result.stdout.splitlines()[-1].split())
    per_voxel = (peak - base) / (192 * 192 * 128)
    assert per_voxel < bench.bytes_per_voxel_limit(1, 3), f"{per_voxel:.1f} bytes per voxel"
    assert nib.load(tmp_path / "out" / "large.nii.gz").shape == (192, 192, 128)


# ---------------------------------------------------------------- a real process
def test_refusal_in_a_real_process(models: dict[int, Path], tmp_path: Path) -> None:
    """The installed entry point: exit status 2, one stderr line, no traceback, no output."""
    inputs = _nan(tmp_path)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "factorseg.cli", *_predict(models[1], inputs, out)],
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"factorseg: error: {inputs[0]}: 1 of 5760 voxels are NaN or infinite"
    ]
    assert not out.exists()
