"""What a first-time user meets: ensembles of models that name their channels differently, ``explain`` (options,
summary, file sizes, montage), tables piped into files, and a training run that ends at validation Dice 0.

Refusals exit with status 2 and one ``factorseg: error:`` line that shows what differs, write nothing and leave
the inputs byte-identical.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from builders import refused as _refused

from factorseg.inference.loading import load_model
from factorseg.bundles.format import save_bundle
from factorseg.cli import main
from factorseg.config import recipe_description
from factorseg.data.labels import LabelSpec
from factorseg.data.synthetic import write_brats_dataset
from factorseg.data.transforms import TransformConfig
from factorseg.errors import InputError
from factorseg.explain import MAP_UNIT, label_centre, quantise_maps, run_explain, write_maps_nifti
from factorseg.inference.pipeline import SegmentationPredictor, check_ensemble
from factorseg.evaluation.metrics import ALL_METRICS
from factorseg.models import create
from factorseg.training.module import SegmentationModule, ValidationStats
from factorseg.training.run import zero_dice_hint

CLASSES = {"mode": "classes", "names": ["background", "a", "b"], "values": [0, 1, 2], "convention": "custom"}
MODEL = {"name": "swin_factorizer", "in_channels": 1, "out_channels": 3, "widths": [8, 16], "head_dim": 4,
         "window_size": 4, "deep_supervision": False}


def _bundle(path: Path, channels: Sequence[str] = ("T1",), labels: dict[str, Any] | None = None,
            roi: int = 16, seed: int = 0, **transforms: Any) -> Path:
    model = {**MODEL, "in_channels": len(channels)}
    labels = labels or CLASSES
    model["out_channels"] = len(labels["names"])
    cfg = {
        "model": model, "labels": labels, "channels": list(channels),
        "transforms": TransformConfig(roi_size=(roi,) * 3, crop_foreground=False, **transforms).to_dict(),
        "inference": {"overlap": 0.0, "sw_batch_size": 1},
    }
    torch.manual_seed(seed)
    return save_bundle(cfg, create("swin_factorizer", **{k: v for k, v in model.items() if k != "name"}), path)


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.Nifti1Image(data, np.eye(4) if affine is None else affine).to_filename(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ensemble")
    regions = {"mode": "regions", "names": ["a", "ab"], "values": [0, 1, 2], "regions": [[1], [1, 2]],
               "fill": [1, 2], "convention": "custom"}
    return {
        "t1": _bundle(root / "t1.pt", ["T1"]),
        "mri": _bundle(root / "mri.pt", ["MRI"], seed=1),
        "renamed": _bundle(root / "renamed.pt", ["T1"], {**CLASSES, "names": ["bg", "left", "right"]}, seed=2),
        "two": _bundle(root / "two.pt", ["T1", "T2"]),
        "values": _bundle(root / "values.pt", ["T1"], {**CLASSES, "values": [0, 1, 3]}),
        "regions": _bundle(root / "regions.pt", ["T1"], regions),
        "spacing": _bundle(root / "spacing.pt", ["T1"], spacing=(2.0, 2.0, 2.0)),
        "window": _bundle(root / "window.pt", ["T1"], roi=32, seed=3),
    }


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = np.random.default_rng(0).uniform(1, 2, (16, 16, 16)).astype(np.float32)
    return _save(tmp_path_factory.mktemp("scan") / "scan.nii.gz", data)


# ---------------------------------------------------------------- 1. ensembles
def test_ensemble_of_models_naming_their_channels_differently_runs_with_one_warning(
        models: dict[str, Path], scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "masks"
    status = main(["predict", "-m", str(models["t1"]), "-m", str(models["mri"]), "-i", str(scan), "-o", str(out),
                   "--no-progress"])
    err = capsys.readouterr().err
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("factorseg: warning: ")]
    assert len(warnings) == 1 and "Traceback" not in err, err
    assert "mri.pt" in warnings[0] and "channels MRI" in warnings[0] and "T1" in warnings[0]
    mask = nib.load(out / "scan.nii.gz")
    assert mask.shape == (16, 16, 16)


def test_ensemble_of_models_naming_their_outputs_differently_warns_and_runs(models: dict[str, Path]) -> None:
    first, other = load_model(models["t1"]), load_model(models["renamed"])
    with pytest.warns(UserWarning, match=r"outputs bg, left, right where t1.pt has background, a, b"):
        check_ensemble(first, other)


def test_ensemble_with_another_window_size_runs_each_network_with_its_own(models: dict[str, Path]) -> None:
    loaded = [load_model(models["t1"]), load_model(models["window"])]
    predictor = SegmentationPredictor(loaded)
    assert predictor.rois == [(16, 16, 16), (32, 32, 32)]
    probs = predictor.probabilities(torch.rand(1, 20, 24, 16))
    assert probs.shape == (3, 20, 24, 16)
    torch.testing.assert_close(probs.sum(0), torch.ones(20, 24, 16))


@pytest.mark.parametrize("other,fragments", [
    ("two", ["channels: t1.pt takes 1 (T1), two.pt 2 (T1, T2)"]),
    ("values", ["labels: t1.pt predicts 3 softmax classes (background=0, a=1, b=2), values.pt 3 softmax classes "
                "(background=0, a=1, b=3)"]),
    ("regions", ["labels:", "softmax classes", "2 sigmoid regions (a=1, ab=1+2)"]),
    ("spacing", ["transforms.spacing: t1.pt has none, spacing.pt [2.0, 2.0, 2.0]"]),
])
def test_incompatible_ensembles_are_refused_showing_both_values(
        models: dict[str, Path], scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture, other: str,
        fragments: list[str]) -> None:
    out = tmp_path / "masks"
    line = _refused(capsys, ["predict", "-m", str(models["t1"]), "-m", str(models[other]), "-i", str(scan),
                             "-o", str(out), "--no-progress"], ["cannot be ensembled with", *fragments],
                    [scan, models["t1"], models[other]], out)
    assert not out.exists(), line


# ---------------------------------------------------------------- 2. explain
@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explain")
    rng = np.random.default_rng(1)
    image = rng.uniform(1, 2, (16, 16, 16)).astype(np.float32)
    label = np.zeros((16, 16, 16), np.uint8)
    label[3:8, 4:9, 9:14] = 1
    label[10:14, 9:13, 2:6] = 2
    image[label > 0] += 1.0
    return {"image": _save(root / "case.nii.gz", image), "label": _save(root / "case_seg.nii.gz", label),
            "model": _bundle(root / "model.pt")}


def test_explain_list_blocks_needs_only_the_model(case: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["explain", "-m", str(case["model"]), "--list-blocks"]) == 0
    assert capsys.readouterr().out.split() == ["encoder.0.0", "encoder.1.0", "decoder.0.0"]


@pytest.mark.parametrize("extra,fragments", [
    (["-i", "IMAGE"], ["explain needs -o/--output", "--list-blocks"]),
    (["-o", "OUT"], ["explain needs -i/--input"]),
    (["-i", "IMAGE", "-o", "OUT", "--nmf-iters", "1001"], ["--nmf-iters must be at most 1000"]),
    (["-i", "IMAGE", "-o", "OUT", "--nmf-iters", "-1"], ["--nmf-iters must be an integer >= 0"]),
    (["-i", "IMAGE", "-o", "OUT", "--device", "cuda:99"], ["device 'cuda:99'"]),
    (["-i", "IMAGE", "-o", "OUT", "--device", "tpu"], ["device 'tpu'"]),
])
def test_explain_refusals(case: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                          extra: list[str], fragments: list[str]) -> None:
    out = tmp_path / "out"
    argv = ["explain", "-m", str(case["model"])]
    argv += [str(case["image"]) if a == "IMAGE" else str(out) if a == "OUT" else a for a in extra]
    _refused(capsys, argv, fragments, [case["image"], case["model"]], out)
    assert not out.exists()


def test_explain_prints_a_summary_per_block_with_the_best_component_per_label(
        case: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    before = {p: p.read_bytes() for p in case.values()}
    capsys.readouterr()
    status = main(["explain", "-m", str(case["model"]), "-i", str(case["image"]), "-o", str(out), "--label",
                   str(case["label"]), "--device", "cpu", "--nmf-iters", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert "{" not in captured.out  # no raw JSON: that stays in components.json
    index = json.loads((out / "components.json").read_text())
    assert len(lines) == 1 + len(index["blocks"])
    assert lines[0].startswith(f"wrote 3 block(s) to {out}") and "overlap.csv" in lines[0]
    for line, (name, block) in zip(lines[1:], index["blocks"].items()):
        assert line.strip().startswith(f"{name}: {block['files']['nifti']}") and block["files"]["montage"] in line
        for label, best in block["best_per_label"].items():
            assert f"{label}: {best['name'].split('/', 1)[-1]} (AUC {best['auc']:.2f})" in line
            aucs = [r["auc"] for r in index["overlap"] if r["block"] == name and r["label"] == label]
            assert best["auc"] == max(aucs)
    assert {p: p.read_bytes() for p in case.values()} == before


def test_explain_nmf_iters_changes_the_maps(case: dict[str, Path], tmp_path: Path) -> None:
    means = []
    for iters in ("0", "8"):
        out = tmp_path / iters
        assert main(["explain", "-m", str(case["model"]), "-i", str(case["image"]), "-o", str(out), "--blocks",
                     "encoder.1.0", "--nmf-iters", iters, "--no-progress"]) == 0
        block = json.loads((out / "components.json").read_text())["blocks"]["encoder.1.0"]
        means.append([c["mean"] for c in block["components"]])
    assert means[0] != means[1]


def _realistic_maps(shape: Sequence[int] = (128, 128, 128), components: int = 4, stride: int = 4,
                    seed: int = 0) -> np.ndarray:
    """Smooth nonnegative maps (upsampled from the block grid) that are zero outside the scan's foreground box,
    as the inverse of the foreground crop leaves them (here 43 % of the volume)."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.gamma(1.0, 1.0, (1, components, *(s // stride for s in shape))).astype(np.float32))
    maps = F.interpolate(low, size=tuple(shape), mode="trilinear", align_corners=False)[0].numpy()
    maps *= np.linspace(0.2, 3.0, components, dtype=np.float32)[:, None, None, None]  # unequal strengths
    box = np.zeros(shape, bool)
    box[16:112, 10:118, 20:108] = True
    return maps * box


def test_component_maps_are_small_and_their_values_recoverable(tmp_path: Path) -> None:
    maps = _realistic_maps()
    affine = np.diag([1.2, 1.0, 1.0, 1.0])
    path = write_maps_nifti(maps, affine, tmp_path / "maps.nii.gz")
    size = path.stat().st_size
    exact = write_maps_nifti(maps, affine, tmp_path / "exact.nii.gz", dtype="float32").stat().st_size
    assert size < 8e6 and size < exact / 2, (size, exact)
    img = nib.load(path)
    assert img.shape == (128, 128, 128, 4) and img.get_data_dtype() == np.uint16
    np.testing.assert_allclose(img.affine, affine)
    back = np.moveaxis(img.get_fdata(dtype=np.float32), -1, 0)
    for k in range(4):  # within 1e-3 (in fact half a step, 5e-4, up to float32 rounding) of each component's maximum
        assert np.abs(back[k] - maps[k]).max() <= 5.01e-4 * maps[k].max()
    assert float(img.header["cal_max"]) == pytest.approx(float(maps.max()), rel=1e-3)
    # uint8 for viewing: smaller still, within 2e-3 of the largest value, even without any zero voxel
    dense = _realistic_maps(components=4, seed=1) + 0.01
    small = write_maps_nifti(dense, affine, tmp_path / "small.nii.gz", dtype="uint8")
    assert small.stat().st_size < 8e6
    back = np.moveaxis(nib.load(small).get_fdata(dtype=np.float32), -1, 0)
    assert np.abs(back - dense).max() <= dense.max() / 510 * (1 + 1e-3)


def test_quantisation_edge_cases() -> None:
    zeros, step = quantise_maps(np.zeros((2, 2, 2, 3), np.float32))
    assert step == 1.0 and not zeros.any()
    maps = np.zeros((4, 4, 4, 3), np.float32)
    maps[..., 0], maps[0, 0, 0, 1] = 1000.0, 0.001  # a component 1e6 weaker: the step is capped at 16 bits
    quantised, step = quantise_maps(maps)
    assert quantised.max() <= 65535 and step == pytest.approx(1000.0 / 65535)
    with pytest.raises(InputError, match="uint16 or uint8"):
        quantise_maps(maps, "float16")


def test_label_centre_is_a_voxel_whose_slices_cross_the_label() -> None:
    label = np.zeros((20, 20, 20), np.uint8)
    label[2:18, 2:18, 4:6] = 1
    label[5:15, 5:15, 4:6] = 0  # a ring: its centre of mass lies in the hole
    centre = label_centre(label)
    assert centre is not None and centre[2] in (4, 5)
    for axis in range(3):
        assert np.take(label, centre[axis], axis=axis).any()
    assert label_centre(np.zeros((3, 3, 3))) is None


def test_montage_is_sorted_by_auc_with_legend_scores_and_cuts_through_the_label(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    figures: list[Figure] = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), save(self, *a, **k))[1])
    torch.manual_seed(0)
    model = create("local_factorizer", in_channels=1, out_channels=2, spatial_dims=3, widths=(8, 16), head_dim=4,
                   window_size=4, rank=2)
    scan = np.random.default_rng(0).uniform(1, 2, (16, 16, 16)).astype(np.float32)
    label = np.zeros(scan.shape, np.uint8)
    label[2:6, 9:13, 3:7] = 1  # centre (3 or 4, 10 or 11, 4 or 5), far from the volume centre
    index = run_explain(model, torch.from_numpy(scan)[None], scan, np.eye(4), tmp_path,
                        blocks=["encoder.1.0"], label=label, montage_components=3)
    block = index["blocks"]["encoder.1.0"]
    shown = block["montage_components"]
    aucs = {r["component"]: r["auc"] for r in index["overlap"]}
    assert len(shown) == 3 and [aucs[k] for k in shown] == sorted((aucs[k] for k in shown), reverse=True)
    (figure,) = figures
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    centre = label_centre(label)
    assert f"axial z={centre[2]} (label centre)" in titles[0] and f"coronal y={centre[1]}" in titles[1]
    rows = [t for t in titles if "AUC" in t]
    assert len(rows) == 3
    for row, k in zip(rows, shown):  # each row names its component and its AUC, best first
        assert block["components"][k]["name"].split("/", 1)[-1] in row and f"1: {aucs[k]:.2f}" in row
    bars = [ax.get_ylabel() for ax in figure.axes if ax.get_ylabel()]
    assert bars == [MAP_UNIT] * 3
    assert "sorted by best AUC" in figure.get_suptitle()


# ---------------------------------------------------------------- 3. tables in full when piped
def test_evaluate_table_is_not_cut_when_piped(models: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    rng = np.random.default_rng(0)
    for name in ("c1", "c2"):
        label = rng.integers(0, 3, (12, 12, 12)).astype(np.uint8)
        _save(ref / f"{name}.nii.gz", label)
        _save(pred / f"{name}.nii.gz", np.where(rng.random(label.shape) < 0.8, label, 0).astype(np.uint8))
    capsys.readouterr()
    assert main(["evaluate", "-p", str(pred), "-r", str(ref), "--labels-from", str(models["t1"]),
                 "--metrics", *ALL_METRICS]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and max(map(len, out.splitlines())) > 80
    header = next(line for line in out.splitlines() if "structure" in line)
    for metric in ALL_METRICS:
        assert metric in header, (metric, header)
    rows = [line for line in out.splitlines() if line.lstrip("│ ").startswith(("a ", "b "))]
    assert len(rows) == 2 and all(line.count("±") == len(ALL_METRICS) for line in rows)


def test_recipes_are_listed_in_full_when_piped(capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert recipe_description("brats", width=10**6) in out and "..." not in out.split("Settings")[0]


def test_demo_summary_table_is_not_cut_when_piped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from factorseg.demo.pipeline import DemoResult

    regions = {f"region number {i}": 0.5 + i / 100 for i in range(8)}
    result = DemoResult(tmp_path, tmp_path / "report.html", tmp_path / "summary.json", regions, 0.53, 65.0, 144)
    capsys.readouterr()
    result.print_summary()
    out = capsys.readouterr().out
    for name in regions:
        assert name in out
    assert "0.530" in out and "…" not in out


# ---------------------------------------------------------------- 4. validation Dice 0: why
LABELS = LabelSpec.from_dict(CLASSES)


@pytest.mark.parametrize("best,stats,steps,fragments", [
    (0.0, ValidationStats(2, 0, [120, 40]), 8,
     ["best validation Dice is 0.000", "2 validation cases hold foreground (a 120, b 40 voxels)",
      "custom's (0, 1, 2; checked when loading)", "the model predicts only background",
      "likely cause: too few training steps (8;"]),
    (-1.0, ValidationStats(1, 5, [0, 0]), 20,
     ["undefined (NaN", "the labels of the 1 validation case hold no foreground voxel (a, b all empty)",
      "likely cause: validation labels without foreground"]),
    (0.0, ValidationStats(3, 500, [10, 0]), 5000,
     ["(a 10 voxels; b empty)", "it predicts 500 foreground voxels", "likely cause: predictions that miss"]),
    (0.0, ValidationStats(3, 0, [10, 10]), 5000, ["predictions all background after enough steps"]),
])
def test_zero_dice_hint_says_which_cause_holds(best: float, stats: ValidationStats, steps: int,
                                               fragments: list[str]) -> None:
    hint = zero_dice_hint(best, stats, LABELS, steps)
    assert hint is not None and "\n" not in hint
    for fragment in fragments:
        assert fragment in hint, hint
    assert zero_dice_hint(0.4, stats, LABELS, steps) is None


def test_validation_step_counts_foreground() -> None:
    config = json.loads(json.dumps({
        "model": {**MODEL, "name": "swin_factorizer"}, "labels": CLASSES, "channels": ["T1"],
        "transforms": TransformConfig(roi_size=(16, 16, 16)).to_dict(),
        "inference": {"overlap": 0.0, "sw_batch_size": 1},
        "train": {"lr": 1e-3, "weight_decay": 0.0, "steps_per_epoch": 1, "epochs": 1, "warmup_epochs": 0,
                  "seed": 0},
    }))
    torch.manual_seed(0)
    module = SegmentationModule(copy.deepcopy(config))
    with torch.no_grad():
        module.model.head.weight.zero_()
        module.model.head.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # background everywhere
    target = torch.zeros(1, 1, 16, 16, 16)
    target[0, 0, :4] = 1
    target[0, 0, 8:9] = 2
    module.on_validation_epoch_start()
    with torch.no_grad():
        module.validation_step({"image": torch.rand(1, 1, 16, 16, 16), "label": target}, 0)
    stats = module.val_stats
    assert (stats.cases, stats.predicted, stats.reference) == (1, 0, [4 * 256, 256])


def test_training_ending_at_undefined_dice_says_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    write_brats_dataset(data, 4, seed=2, shape=(16, 16, 16))
    for seg in data.rglob("*_seg.nii.gz"):  # labels without any foreground
        img = nib.load(seg)
        nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine).to_filename(seg)
    out = tmp_path / "run"
    capsys.readouterr()
    status = main(["train", "-d", str(data), "-o", str(out), "--recipe", "demo", "--epochs", "1",
                   "--steps-per-epoch", "2", "--batch-size", "1", "--num-workers", "0", "--folds", "4",
                   "--val-interval", "1", "--no-progress", "-s", "model.widths=[8,16]", "-s", "model.head_dim=4",
                   "-s", "model.deep_supervision=false", "-s", "transforms.roi_size=[16,16,16]",
                   "-s", "transforms.num_samples=1"])
    err = capsys.readouterr().err
    assert status == 0, err
    hints = [line for line in err.splitlines() if "best validation Dice" in line]
    assert len(hints) == 1 and hints[0].startswith("factorseg: warning: "), err
    assert "best validation Dice is 0.000" in hints[0]  # empty references with foreground predicted score 0
    assert "the labels of the 1 validation case hold no foreground voxel (TC, WT, ET all empty)" in hints[0]
    assert "likely cause: validation labels without foreground" in hints[0]
    assert (out / "model_best.pt").is_file() and os.path.getsize(out / "model_best.pt") > 0
