"""``factorseg.Predictor``: the Python front end gives ``factorseg predict``'s masks bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from builders import tiny_bundle

import factorseg
from factorseg.cli import main
from factorseg.errors import InputError

AFFINE = np.array([[0.0, -1.5, 0.0, 30.0], [1.2, 0.0, 0.0, -12.0], [0.0, 0.0, 2.0, 5.0], [0, 0, 0, 1]])


def _scan(path: Path, shape: tuple[int, ...] = (21, 18, 20), seed: int = 0) -> Path:
    """A small synthetic scan (int16 voxels, a rotated anisotropic grid)."""
    data = (np.random.default_rng(seed).normal(size=shape) * 300).astype(np.int16)
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def _cli_mask(capsys: pytest.CaptureFixture, model: str, inputs: list[Path], out: Path, *extra: str) -> nib.Nifti1Image:
    assert main(["predict", "-m", model, "-i", *map(str, inputs), "-o", str(out), "--no-progress", *extra]) == 0, \
        capsys.readouterr().err
    (written,) = sorted(out.glob("*.nii.gz"))
    return nib.load(written)


def _same(mask: np.ndarray, image: nib.Nifti1Image) -> None:
    expected = np.asanyarray(image.dataobj)
    assert mask.dtype == expected.dtype and mask.shape == expected.shape
    assert np.array_equal(mask, expected)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.pt", channels=1)


def test_import_is_light_and_exports_the_predictor() -> None:
    code = "import sys, factorseg; assert 'torch' not in sys.modules, 'import factorseg loaded torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert factorseg.Predictor.__module__ == "factorseg.inference.predictor"
    assert callable(factorseg.models.create)


def test_file_and_array_match_the_cli_bit_for_bit(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scan = _scan(tmp_path / "case.nii.gz")
    before = scan.read_bytes()
    cli = _cli_mask(capsys, str(bundle), [scan], tmp_path / "cli")
    predictor = factorseg.Predictor.from_file(bundle)
    from_file = predictor.predict(scan)
    _same(from_file.mask, cli)
    assert np.array_equal(from_file.affine, cli.affine)
    assert from_file.probabilities.shape == (3, *cli.shape) and from_file.probabilities.dtype == np.float32
    assert np.allclose(from_file.probabilities.sum(0), 1, atol=1e-5)

    # The same voxels as an array (numpy or torch, 3D or channel-first 4D) on the file's grid.
    image = nib.load(scan)
    voxels = image.get_fdata(dtype=np.float32)
    kept = voxels.copy()
    for given in (voxels, voxels[None], torch.from_numpy(voxels.copy())):
        result = predictor.predict(given, affine=image.affine)
        assert np.array_equal(result.mask, from_file.mask) and result.mask.dtype == from_file.mask.dtype
        assert np.array_equal(result.probabilities, from_file.probabilities)
        assert np.allclose(result.affine, image.affine)
    assert np.array_equal(voxels, kept) and scan.read_bytes() == before  # inputs untouched

    # predict_to_nifti writes what the command writes; it refuses to overwrite unless asked.
    out = tmp_path / "mine" / "case.nii.gz"
    out.parent.mkdir()
    assert predictor.predict_to_nifti(scan, out) == out
    mine = nib.load(out)
    _same(np.asanyarray(mine.dataobj), cli)
    assert np.array_equal(mine.affine, cli.affine)
    written = out.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        predictor.predict_to_nifti(scan, out)
    assert out.read_bytes() == written
    predictor.predict_to_nifti(voxels, out, affine=image.affine, overwrite=True)
    _same(np.asanyarray(nib.load(out).dataobj), cli)
    assert sorted(p.name for p in out.parent.iterdir()) == ["case.nii.gz"]  # no temporary left


def test_options_and_channel_files_match_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tiny_bundle(tmp_path / "two.pt", channels=2)
    files = [_scan(tmp_path / "c0.nii.gz", seed=1), _scan(tmp_path / "c1.nii.gz", seed=2)]
    cli = _cli_mask(capsys, str(model), files, tmp_path / "cli", "--tta", "--overlap", "0.25", "--nmf-iters", "1")
    predictor = factorseg.Predictor.from_file(model, tta=True, overlap=0.25, nmf_iters=1)
    result = predictor.predict(files)
    _same(result.mask, cli)
    stacked = np.stack([nib.load(f).get_fdata(dtype=np.float32) for f in files])
    assert np.array_equal(predictor.predict(torch.from_numpy(stacked), affine=AFFINE).mask, result.mask)
    plain = factorseg.Predictor.from_file(model).predict(files)
    assert not np.array_equal(plain.probabilities, result.probabilities)  # the options act


@pytest.mark.parametrize("options, fragment", [
    ({"overlap": 1.0}, "overlap"), ({"sw_batch_size": 0}, "sw_batch_size"), ({"sw_batch_size": 5000}, "sw_batch_size"),
    ({"nmf_iters": -1}, "nmf_iters"), ({"tta": "yes"}, "tta"), ({"blend": "max"}, "blend"),
    ({"device": "tpu"}, "device"), ({"device": "cuda:99"}, "cuda"),
])
def test_bad_options_are_one_line(bundle: Path, options: dict, fragment: str) -> None:
    if options.get("device") == "cuda:99" and torch.cuda.device_count() >= 100:
        pytest.skip("a machine with 100 GPUs")
    with pytest.raises(InputError, match=fragment) as info:
        factorseg.Predictor.from_file(bundle, **options)
    assert "\n" not in str(info.value)


def test_bad_inputs_are_one_line(bundle: Path, tmp_path: Path) -> None:
    predictor = factorseg.Predictor.from_file(bundle)
    scan = _scan(tmp_path / "case.nii.gz")
    cases = [
        (lambda: predictor.predict(np.zeros((2, 16, 16, 16))), "2 channels but the model expects 1"),
        (lambda: predictor.predict(np.zeros((16, 16))), "shaped"),
        (lambda: predictor.predict(np.full((16, 16, 16), np.nan)), "NaN"),
        (lambda: predictor.predict(np.zeros((16, 16, 16)), affine=np.zeros((4, 4))), "affine"),
        (lambda: predictor.predict(np.zeros((16, 16, 16)), affine=np.eye(3)), "affine"),
        (lambda: predictor.predict(scan, affine=np.eye(4)), "affine is only"),
        (lambda: predictor.predict(tmp_path / "absent.nii.gz"), "absent.nii.gz"),
        (lambda: predictor.predict(tmp_path), "folder"),
        (lambda: predictor.predict([scan, scan, scan]), "3 files"),
        (lambda: predictor.predict_to_nifti(scan, tmp_path / "mask.png"), ".nii"),
        (lambda: predictor.predict_to_nifti(scan, tmp_path / "no" / "mask.nii.gz"), "does not exist"),
        (lambda: predictor.predict_to_nifti(scan, scan, overwrite=True), "input file"),
        (lambda: factorseg.Predictor.from_pretrained("nope"), "shipped: hippocampus"),
        (lambda: factorseg.Predictor.from_file(tmp_path / "absent.pt"), "not found"),
    ]
    before = sorted(tmp_path.rglob("*"))
    for call, fragment in cases:
        with pytest.raises(InputError, match=fragment) as info:
            call()
        assert "\n" not in str(info.value)
    assert sorted(tmp_path.rglob("*")) == before


def test_onnx_export_runs_through_the_predictor(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    onnx = tmp_path / "tiny.onnx"
    assert main(["export", "-m", str(bundle), "-o", str(onnx)]) == 0, capsys.readouterr().err
    scan = _scan(tmp_path / "case.nii.gz")
    cli = _cli_mask(capsys, str(onnx), [scan], tmp_path / "cli", "--backend", "onnxruntime")
    _same(factorseg.Predictor.from_file(onnx).predict(scan).mask, cli)
    with pytest.raises(InputError, match="ONNX"):
        factorseg.Predictor.from_file(onnx, nmf_iters=1)


@pytest.mark.parametrize("format", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def test_prediction_and_export_leave_the_callers_model_as_it_was(format: str, bundle: Path, tmp_path: Path) -> None:
    """They run copies where the model must change (mode, NMF iterations, device, zero biases for ONNX)."""
    if format == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    from factorseg.inference.export import export_bundle
    from factorseg.inference.loading import load_model
    from factorseg.models.layers.nmf import NMF

    loaded = load_model(bundle)
    model = loaded.model.train()  # the caller's own state, e.g. in the middle of fine-tuning

    def state() -> tuple[list[bool], list[int], list[tuple[str, str, torch.Tensor]]]:
        return ([m.training for m in model.modules()], [m.num_iters for m in model.modules() if isinstance(m, NMF)],
                [(k, str(v.device), v.clone()) for k, v in model.state_dict().items()])

    modes, iters, weights = state()
    assert all(modes) and iters and 1 not in iters and 2 not in iters
    zeros = np.zeros((16, 16, 16), np.float32)
    factorseg.Predictor(loaded, nmf_iters=1, tta=False).predict(zeros)
    exported = export_bundle(loaded, tmp_path / f"tiny.{format}", format, nmf_iters=2)  # type: ignore[arg-type]
    after_modes, after_iters, after_weights = state()
    assert after_modes == modes and after_iters == iters
    assert [(k, d) for k, d, _ in after_weights] == [(k, d) for k, d, _ in weights]  # no bias added, none moved
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(after_weights, weights))
    # The export runs through the same interface, with the iterations it was made with (and no others).
    assert factorseg.Predictor.from_file(exported, nmf_iters=2).predict(zeros).mask.shape == zeros.shape
    with pytest.raises(InputError, match="ONNX" if format == "onnx" else "TorchScript"):
        factorseg.Predictor.from_file(exported, nmf_iters=3)


def test_shipped_model_on_a_real_case_matches_the_cli(shared_data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    folder = shared_data / "hippocampus" / "imagesTr"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    scan = sorted(p for p in folder.glob("*.nii.gz") if not p.name.startswith("."))[0]
    cli = _cli_mask(capsys, "hippocampus", [scan], tmp_path / "cli")
    predictor = factorseg.Predictor.from_pretrained("hippocampus")
    result = predictor.predict(scan)
    _same(result.mask, cli)
    assert set(np.unique(result.mask)) <= {0, 1, 2}
    image = nib.load(scan)
    assert np.array_equal(predictor.predict(image.get_fdata(dtype=np.float32), affine=image.affine).mask, result.mask)
