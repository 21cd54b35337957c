"""Folder evaluation: pairing, grid checks, CSV/JSON outputs and their agreement with per-case metrics."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import HausdorffDistanceMetric
from rich.console import Console

from factorseg.evaluation import metrics as M
from factorseg.data.labels import LABEL_SPECS, LabelSpec
from factorseg.errors import InputError
from factorseg.evaluation.folders import EvaluationResult, evaluate_folders, pair_cases

torch.set_num_threads(1)

SPACING = (1.0, 1.5, 2.0)
AFFINE = np.diag([*SPACING, 1.0]) @ np.array([[1, 0, 0, -10], [0, 1, 0, 5], [0, 0, 1, 2], [0, 0, 0, 1]], float)
STRUCTURES = {"one": [1], "two": [2], "both": [1, 2]}


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    nib.Nifti1Image(np.asarray(array), affine).to_filename(path)


def make_case(seed: int, shape: tuple[int, int, int] = (24, 20, 16)) -> tuple[np.ndarray, np.ndarray]:
    """A reference with two adjacent boxes and a prediction shifted by a seed-dependent offset."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, dtype=np.uint8)
    ref[4:12, 4:14, 3:10] = 1
    ref[12:18, 4:14, 3:10] = 2
    pred = np.roll(ref, tuple(int(v) for v in rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
    return pred, ref


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    cases = {f"case_{i:03d}": make_case(i) for i in range(3)}
    for i, (case, (pred, ref)) in enumerate(cases.items()):
        save(ref_dir / f"{case}.nii.gz", ref)
        # Mix .nii and .nii.gz, and an nnU-Net image-style name for one prediction.
        name = {0: f"{case}.nii.gz", 1: f"{case}.nii", 2: f"{case}_0000.nii.gz"}[i]
        save(pred_dir / name, pred.astype(np.float32))
    (pred_dir / "notes.txt").write_text("not an image")
    return pred_dir, ref_dir, cases


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_outputs_match_per_case_metrics(folders, tmp_path: Path) -> None:
    pred_dir, ref_dir, cases = folders
    metrics = ["dice", "hd95", "nsd", "avd", "lesion_f1"]
    out = tmp_path / "out" / "nested"
    result = evaluate_folders(pred_dir, ref_dir, STRUCTURES, metrics=metrics, out_dir=out, nsd_tolerance=1.5)

    expected = {
        case: M.compute_case_metrics(pred, ref, SPACING, STRUCTURES, metrics, nsd_tolerance=1.5)
        for case, (pred, ref) in cases.items()
    }
    assert result.per_case == expected
    columns = [f"{m}/{s}" for m in metrics for s in STRUCTURES]

    rows = read_csv(out / "per_case.csv")
    assert [r["case"] for r in rows] == sorted(cases)
    assert list(rows[0]) == ["case", "prediction_missing", *columns]
    for row in rows:
        assert row["prediction_missing"] == "0"
        for column in columns:
            assert float(row[column]) == expected[row["case"]][column]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 3
    assert summary["missing_predictions"] == [] and summary["unmatched_predictions"] == []
    assert summary["settings"]["structures"] == STRUCTURES
    assert summary["settings"]["nsd_tolerance_mm"] == dict.fromkeys(STRUCTURES, 1.5)
    assert summary["conventions"] == M.CONVENTIONS
    assert list(summary["metrics"]) == columns
    for column in columns:
        values = np.array([expected[c][column] for c in sorted(cases)])
        stats = summary["metrics"][column]
        assert stats["mean"] == pytest.approx(values.mean())
        assert stats["std"] == pytest.approx(values.std(ddof=1))
        assert stats["median"] == pytest.approx(np.median(values))
        assert (stats["min"], stats["max"]) == (values.min(), values.max())
    assert result.summary == summary["metrics"]
    assert sorted(p.name for p in out.iterdir()) == ["per_case.csv", "summary.json"]  # no temp files left


def test_header_spacing_is_used(tmp_path: Path) -> None:
    """Cubes offset by 3 voxels along the 2 mm axis: HD95 = 6 mm, read from the NIfTI affine."""
    pred_dir, ref_dir = tmp_path / "p", tmp_path / "r"
    pred_dir.mkdir()
    ref_dir.mkdir()
    ref = np.zeros((20, 20, 24), dtype=np.uint8)
    ref[5:15, 5:15, 5:15] = 1
    save(ref_dir / "a.nii.gz", ref)
    save(pred_dir / "a.nii.gz", np.roll(ref, 3, axis=2))
    result = evaluate_folders(pred_dir, ref_dir, {"cube": [1]}, metrics=["hd95", "avd"])
    assert result.per_case["a"]["hd95/cube"] == pytest.approx(3 * SPACING[2])
    assert result.per_case["a"]["avd/cube"] == 0.0
    assert result.per_case_csv is None and result.summary_json is None


def test_label_spec_classes_and_regions(folders) -> None:
    pred_dir, ref_dir, cases = folders
    spec = LabelSpec.classes_from_values([0, 1, 2], ["background", "anterior", "posterior"])
    assert M.structures_from_labels(spec) == {"anterior": {1}, "posterior": {2}}
    result = evaluate_folders(pred_dir, ref_dir, spec, metrics=["dice"])
    assert list(result.summary) == ["dice/anterior", "dice/posterior"]
    pred, ref = cases["case_001"]
    assert result.per_case["case_001"]["dice/posterior"] == M.dice(pred == 2, ref == 2)

    regions = LabelSpec.regions_from_sets(["whole", "inner"], [[1, 2], [2]])
    assert M.structures_from_labels(regions) == {"whole": {1, 2}, "inner": {2}}
    result = evaluate_folders(pred_dir, ref_dir, regions, metrics=["dice"])
    assert result.per_case["case_001"]["dice/whole"] == M.dice(pred > 0, ref > 0)
    # Values outside the convention are rejected, naming the file.
    with pytest.raises(InputError, match=r"case_000\.nii\.gz.*\[1\]"):
        evaluate_folders(pred_dir, ref_dir, LabelSpec.classes_from_values([0, 2]))
    assert M.structures_from_labels(LABEL_SPECS["brats2023"]) == {"TC": {1, 3}, "WT": {1, 2, 3}, "ET": {3}}


def test_missing_prediction(folders, tmp_path: Path) -> None:
    pred_dir, ref_dir, cases = folders
    (pred_dir / "case_001.nii").unlink()
    with pytest.raises(InputError, match="case_001") as info:
        evaluate_folders(pred_dir, ref_dir, STRUCTURES)
    assert "\n" not in str(info.value)

    out = tmp_path / "out"
    result = evaluate_folders(pred_dir, ref_dir, STRUCTURES, metrics=["dice", "hd95"], out_dir=out, allow_missing=True)
    assert result.missing == ["case_001"]
    shape = cases["case_001"][1].shape
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, SPACING)))
    assert result.per_case["case_001"]["dice/one"] == 0.0
    assert result.per_case["case_001"]["hd95/one"] == pytest.approx(diagonal)
    rows = {r["case"]: r for r in read_csv(out / "per_case.csv")}
    assert rows["case_001"]["prediction_missing"] == "1" and rows["case_000"]["prediction_missing"] == "0"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing_predictions"] == ["case_001"]
    dices = [result.per_case[c]["dice/one"] for c in sorted(cases)]
    assert summary["metrics"]["dice/one"]["mean"] == pytest.approx(np.mean(dices))


def test_unmatched_predictions_are_reported(folders) -> None:
    pred_dir, ref_dir, cases = folders
    save(pred_dir / "stranger.nii.gz", cases["case_000"][0])
    result = evaluate_folders(pred_dir, ref_dir, STRUCTURES, metrics=["dice"])
    assert result.unmatched == ["stranger.nii.gz"] and result.n_cases == 3


def test_pairing_rules() -> None:
    refs = {"a": Path("a.nii.gz"), "b": Path("b.nii.gz")}
    names = ["a.nii.gz", "a_0000.nii.gz", "b_0001.nii.gz", "c_0000.nii"]
    preds = {name.split(".")[0]: Path(name) for name in names}
    paired, unmatched = pair_cases(preds, refs)
    assert paired == {"a": Path("a.nii.gz"), "b": Path("b_0001.nii.gz")}
    assert unmatched == ["a_0000.nii.gz", "c_0000.nii"]
    with pytest.raises(InputError, match="two predictions"):
        pair_cases({"b_0000": Path("b_0000.nii"), "b_0001": Path("b_0001.nii")}, refs)


def test_duplicate_case_files(folders) -> None:
    pred_dir, ref_dir, cases = folders
    save(ref_dir / "case_000.nii", cases["case_000"][1])
    with pytest.raises(InputError, match="case_000.*two files"):
        evaluate_folders(pred_dir, ref_dir, STRUCTURES)


def test_grid_mismatch_names_the_case(folders) -> None:
    pred_dir, ref_dir, cases = folders
    pred, _ = cases["case_000"]
    save(pred_dir / "case_000.nii.gz", pred[:-1])
    with pytest.raises(InputError, match=r"case case_000: .*shape"):
        evaluate_folders(pred_dir, ref_dir, STRUCTURES)
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    save(pred_dir / "case_000.nii.gz", pred, affine=shifted)
    with pytest.raises(InputError, match=r"case case_000: .*not on the reference grid"):
        evaluate_folders(pred_dir, ref_dir, STRUCTURES)


def test_bad_inputs(folders, tmp_path: Path) -> None:
    pred_dir, ref_dir, cases = folders
    with pytest.raises(InputError, match="does not exist"):
        evaluate_folders(tmp_path / "nope", ref_dir, STRUCTURES)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no .nii"):
        evaluate_folders(pred_dir, empty, STRUCTURES)
    with pytest.raises(InputError, match="unknown metric"):
        evaluate_folders(pred_dir, ref_dir, STRUCTURES, metrics=["iou"])
    with pytest.raises(InputError, match="num_workers"):
        evaluate_folders(pred_dir, ref_dir, STRUCTURES, num_workers=-1)
    save(pred_dir / "case_000.nii.gz", cases["case_000"][0] + np.float32(0.4))
    with pytest.raises(InputError, match="case_000.nii.gz: not a label map"):
        evaluate_folders(pred_dir, ref_dir, STRUCTURES)
    blocker = tmp_path / "file"
    blocker.write_text("")
    save(pred_dir / "case_000.nii.gz", cases["case_000"][0])
    with pytest.raises(InputError, match="not a folder"):
        evaluate_folders(pred_dir, ref_dir, STRUCTURES, out_dir=blocker)


def test_overwrites_previous_outputs(folders, tmp_path: Path) -> None:
    pred_dir, ref_dir, _ = folders
    out = tmp_path / "out"
    evaluate_folders(pred_dir, ref_dir, STRUCTURES, metrics=["dice", "hd95"], out_dir=out)
    evaluate_folders(pred_dir, ref_dir, STRUCTURES, metrics=["dice"], out_dir=out)
    header = list(read_csv(out / "per_case.csv")[0])
    assert header == ["case", "prediction_missing", "dice/one", "dice/two", "dice/both"]
    assert json.loads((out / "summary.json").read_text())["settings"]["metrics"] == ["dice"]


def test_process_pool_gives_same_results(folders) -> None:
    pred_dir, ref_dir, _ = folders
    serial = evaluate_folders(pred_dir, ref_dir, STRUCTURES, metrics=["dice", "hd95"])
    parallel = evaluate_folders(pred_dir, ref_dir, STRUCTURES, metrics=["dice", "hd95"], num_workers=2)
    assert parallel.per_case == serial.per_case and parallel.summary == serial.summary


def test_table_and_single_case_std() -> None:
    result = EvaluationResult(
        per_case={"a": {"dice/x": 0.5, "hd95/x": 2.0}},
        summary={"dice/x": {"mean": 0.5, "std": 0.0, "median": 0.5, "min": 0.5, "max": 0.5},
                 "hd95/x": {"mean": 2.0, "std": 0.0, "median": 2.0, "min": 2.0, "max": 2.0}},
        structures={"x": [1]},
        metrics=["dice", "hd95"],
        missing=["a"],
    )  # fmt: skip
    console = Console(record=True, width=120, color_system=None)
    result.print_table(console)
    text = console.export_text()
    assert "Evaluation of 1 cases" in text
    assert "0.500 ± 0.000" in text and "2.00 ± 0.00" in text and "hd95 (mm)" in text
    assert "missing prediction(s) scored as empty: a" in text


def test_single_case_summary_has_zero_std(folders, tmp_path: Path) -> None:
    pred_dir, ref_dir, _ = folders
    for name in ("case_001.nii.gz", "case_002.nii.gz"):
        (ref_dir / name).unlink()
    result = evaluate_folders(pred_dir, ref_dir, STRUCTURES, metrics=["dice"])
    assert result.n_cases == 1 and result.unmatched == ["case_001.nii", "case_002_0000.nii.gz"]
    assert all(s["std"] == 0.0 and math.isfinite(s["mean"]) for s in result.summary.values())


def test_real_hippocampus_labels_against_monai(shared_data: Path, tmp_path: Path) -> None:
    """Three MSD hippocampus labels vs copies shifted by one voxel: HD95 matches MONAI with header spacing."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    sources = sorted((shared_data / "hippocampus" / "labelsTr").glob("*.nii.gz"))[:3]
    for src in sources:
        img = nib.load(src)
        label = np.rint(np.asanyarray(img.dataobj)).astype(np.uint8)
        save(ref_dir / src.name, label, img.affine)
        save(pred_dir / src.name, np.roll(label, 1, axis=1), img.affine)
    spec = LabelSpec.classes_from_values([0, 1, 2], ["background", "anterior", "posterior"])
    result = evaluate_folders(pred_dir, ref_dir, spec, metrics=["dice", "hd95"])
    hd_metric = HausdorffDistanceMetric(include_background=True, percentile=95)
    for src in sources:
        case = src.name[: -len(".nii.gz")]
        ref_img = nib.load(ref_dir / src.name)
        ref = np.asanyarray(ref_img.dataobj)
        pred = np.asanyarray(nib.load(pred_dir / src.name).dataobj)
        spacing = [float(v) for v in ref_img.header.get_zooms()[:3]]
        for value, name in ((1, "anterior"), (2, "posterior")):
            p = torch.from_numpy((pred == value)[None, None].astype(np.float32))
            r = torch.from_numpy((ref == value)[None, None].astype(np.float32))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = float(hd_metric(p, r, spacing=spacing)[0, 0])
            assert result.per_case[case][f"hd95/{name}"] == pytest.approx(expected, abs=1e-4)
            assert 0.3 < result.per_case[case][f"dice/{name}"] < 1.0
