"""Metrics against MONAI's metric classes and hand-built cases with known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric, compute_surface_dice
from scipy import ndimage

from factorseg.evaluation import metrics as M
from factorseg.errors import InputError

torch.set_num_threads(1)
# MONAI 1.6 warns about its own deprecated argument inside HausdorffDistanceMetric.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")

SPACING = (1.5, 1.0, 0.7)


def random_blobs(shape: tuple[int, ...], seed: int, threshold: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping, irregular multi-blob masks from smoothed noise."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    ref = base > threshold * base.std()
    pred = (base + 0.5 * noise * base.std() / noise.std()) > threshold * base.std()
    assert ref.any() and pred.any() and not np.array_equal(ref, pred)
    return pred, ref


def as_monai(mask: np.ndarray) -> torch.Tensor:
    """Binary mask -> MONAI one-hot batch ``[1, 1, *spatial]``."""
    return torch.from_numpy(mask[None, None].astype(np.float32))


def cube(shape: tuple[int, int, int], start: tuple[int, int, int], size: int) -> np.ndarray:
    """Boolean volume with one axis-aligned cube."""
    out = np.zeros(shape, dtype=bool)
    out[tuple(slice(s, s + size) for s in start)] = True
    return out


def sphere(shape: tuple[int, int, int], centre: tuple[float, ...], radius: float) -> np.ndarray:
    """Boolean volume with one voxelised ball."""
    grid = np.indices(shape, dtype=np.float64)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_monai_on_random_blobs_with_anisotropic_spacing(seed: int) -> None:
    pred, ref = random_blobs((40, 36, 32), seed)
    p, r = as_monai(pred), as_monai(ref)

    dice_metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    assert M.dice(pred, ref) == pytest.approx(float(dice_metric(p, r)[0, 0]), abs=1e-6)

    hd_metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    expected_hd = float(hd_metric(p, r, spacing=list(SPACING))[0, 0])
    assert M.hd95(pred, ref, SPACING) == pytest.approx(expected_hd, abs=1e-4)
    # Spacing matters: isotropic 1 mm gives a different (MONAI-matching) value.
    iso = float(HausdorffDistanceMetric(include_background=True, percentile=95)(p, r)[0, 0])
    assert M.hd95(pred, ref, 1.0) == pytest.approx(iso, abs=1e-4)

    for tol in (0.9, 2.3):
        nsd_metric = SurfaceDiceMetric(class_thresholds=[tol], include_background=True, reduction="none")
        expected = float(nsd_metric(p, r, spacing=list(SPACING))[0, 0])
        functional = float(compute_surface_dice(p, r, [tol], include_background=True, spacing=list(SPACING))[0, 0])
        assert expected == pytest.approx(functional)
        assert M.surface_dice(pred, ref, SPACING, tolerance_mm=tol) == pytest.approx(expected, abs=1e-6)


def test_sensitivity_precision_avd_on_random_blobs() -> None:
    pred, ref = random_blobs((32, 32, 32), 5)
    tp = np.count_nonzero(pred & ref)
    fp = np.count_nonzero(pred & ~ref)
    fn = np.count_nonzero(~pred & ref)
    assert M.sensitivity(pred, ref) == pytest.approx(tp / (tp + fn))
    assert M.precision(pred, ref) == pytest.approx(tp / (tp + fp))
    voxel_ml = np.prod(SPACING) / 1000.0
    expected = abs(int(pred.sum()) - int(ref.sum())) * voxel_ml
    assert M.abs_volume_difference(pred, ref, SPACING) == pytest.approx(expected)


@pytest.mark.parametrize(("axis", "k"), [(0, 3), (1, 2), (2, 4)])
def test_hd95_of_offset_cubes_is_offset_times_spacing(axis: int, k: int) -> None:
    shape = (40, 40, 40)
    start = [10, 10, 10]
    a = cube(shape, tuple(start), 10)
    start[axis] += k
    b = cube(shape, tuple(start), 10)
    assert M.hd95(a, b, SPACING) == pytest.approx(k * SPACING[axis])
    assert M.hd95(b, a, SPACING) == pytest.approx(k * SPACING[axis])
    # Every surface voxel is within k * spacing of the other surface, and the back faces are not closer.
    assert M.surface_dice(a, b, SPACING, tolerance_mm=k * SPACING[axis] + 1e-6) == pytest.approx(1.0)
    assert M.surface_dice(a, b, SPACING, tolerance_mm=k * SPACING[axis] - 1e-3) < 1.0
    assert M.dice(a, b) == pytest.approx(2 * (10 - k) * 100 / 2000)


def test_sphere_against_itself_is_perfect() -> None:
    ball = sphere((32, 32, 32), (15.5, 16, 14), 9)
    assert M.dice(ball, ball) == 1.0
    assert M.hd95(ball, ball, SPACING) == 0.0
    assert M.surface_dice(ball, ball, SPACING, 0.0) == 1.0
    assert M.sensitivity(ball, ball) == M.precision(ball, ball) == 1.0
    assert M.abs_volume_difference(ball, ball, SPACING) == 0.0
    assert M.lesion_wise_f1(ball, ball) == 1.0
    assert M.lesion_count_difference(ball, ball) == 0.0


def test_volume_difference_in_ml() -> None:
    pred = np.zeros((8, 8, 8), dtype=bool)
    ref = np.zeros_like(pred)
    pred[:2, :5] = True  # 80 voxels
    ref[:1, :4] = True  # 32 voxels
    assert M.abs_volume_difference(pred, ref, (2.0, 2.0, 2.0)) == pytest.approx(48 * 8 / 1000)
    assert M.abs_volume_difference(ref, pred, (2.0, 2.0, 2.0)) == pytest.approx(48 * 8 / 1000)


def three_lesion_case() -> tuple[np.ndarray, np.ndarray]:
    """Reference with 3 lesions; prediction hits 2 of them and adds 1 false positive."""
    shape = (40, 40, 40)
    ref = cube(shape, (2, 2, 2), 4) | cube(shape, (20, 2, 2), 4) | cube(shape, (2, 20, 20), 5)
    pred = cube(shape, (3, 3, 3), 2) | cube(shape, (21, 1, 1), 6) | cube(shape, (30, 30, 30), 3)
    return pred, ref


def test_lesion_f1_three_reference_two_hit_one_false_positive() -> None:
    pred, ref = three_lesion_case()
    assert M.lesion_wise_f1(pred, ref) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert M.lesion_count_difference(pred, ref) == 0.0
    # One predicted component overlapping two reference lesions: both are detected, no FP.
    shape = ref.shape
    bridge = cube(shape, (2, 2, 2), 3) | cube(shape, (20, 2, 2), 3) | np.zeros(shape, dtype=bool)
    bridge[2:23, 3, 3] = True
    assert M.lesion_wise_f1(bridge, ref) == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert M.lesion_count_difference(bridge, ref) == 2.0


def test_lesions_use_26_connectivity() -> None:
    ref = np.zeros((6, 6, 6), dtype=bool)
    ref[1, 1, 1] = ref[2, 2, 2] = True  # touching at a corner only: one lesion
    pred = np.zeros_like(ref)
    pred[2, 2, 2] = True
    assert M.lesion_count_difference(np.zeros_like(ref), ref) == 1.0
    assert M.lesion_wise_f1(pred, ref) == 1.0


def isles_reference_f1(pred: np.ndarray, ref: np.ndarray) -> float:
    """Per-cluster loop in the style of the ISLES'22 description (independent of the vectorised code)."""
    conn = np.ones((3, 3, 3))
    ref_lab, n_ref = ndimage.label(ref, structure=conn)
    pred_lab, n_pred = ndimage.label(pred, structure=conn)
    tp = sum(bool(np.any(pred[ref_lab == i])) for i in range(1, n_ref + 1))
    fp = sum(not np.any(ref[pred_lab == i]) for i in range(1, n_pred + 1))
    fn = n_ref - tp
    return 1.0 if tp + fp + fn == 0 else tp / (tp + (fp + fn) / 2)


@pytest.mark.parametrize("seed", [3, 4])
def test_lesion_f1_matches_per_cluster_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = ndimage.gaussian_filter(rng.standard_normal((32, 32, 32)), 1.2) > 0.25
    pred = ndimage.gaussian_filter(rng.standard_normal((32, 32, 32)), 1.2) > 0.25
    pred |= ref & (rng.random(ref.shape) > 0.7)
    assert M.lesion_wise_f1(pred, ref) == pytest.approx(isles_reference_f1(pred, ref))


def test_empty_conventions() -> None:
    shape = (20, 24, 16)
    empty = np.zeros(shape, dtype=bool)
    blob = cube(shape, (4, 4, 4), 5)
    spacing = (1.2, 1.0, 3.0)
    diagonal = math.sqrt((20 * 1.2) ** 2 + 24**2 + (16 * 3.0) ** 2)

    both = {
        "dice": M.dice(empty, empty),
        "hd95": M.hd95(empty, empty, spacing),
        "nsd": M.surface_dice(empty, empty, spacing),
        "sensitivity": M.sensitivity(empty, empty),
        "precision": M.precision(empty, empty),
        "avd": M.abs_volume_difference(empty, empty, spacing),
        "lesion_f1": M.lesion_wise_f1(empty, empty),
        "lesion_count_diff": M.lesion_count_difference(empty, empty),
    }
    assert both == {
        "dice": 1.0, "hd95": 0.0, "nsd": 1.0, "sensitivity": 1.0, "precision": 1.0,
        "avd": 0.0, "lesion_f1": 1.0, "lesion_count_diff": 0.0,
    }  # fmt: skip

    for pred, ref in ((empty, blob), (blob, empty)):
        assert M.dice(pred, ref) == 0.0
        assert M.hd95(pred, ref, spacing) == pytest.approx(diagonal)
        assert M.surface_dice(pred, ref, spacing) == 0.0
        assert M.sensitivity(pred, ref) == 0.0
        assert M.precision(pred, ref) == 0.0
        assert M.lesion_wise_f1(pred, ref) == 0.0
        assert M.lesion_count_difference(pred, ref) == 1.0
        assert M.abs_volume_difference(pred, ref, spacing) == pytest.approx(125 * 1.2 * 3.0 / 1000)
    # MONAI returns 0 Dice when the reference is empty and the prediction is not (ignore_empty=False).
    monai_dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    assert float(monai_dice(as_monai(blob), as_monai(empty))[0, 0]) == M.dice(blob, empty)
    # BraTS penalty for its 240 x 240 x 155 grid at 1 mm.
    assert M.image_diagonal_mm((240, 240, 155), 1.0) == pytest.approx(373.13, abs=0.005)


def test_all_values_are_finite_python_floats() -> None:
    pred, ref = random_blobs((24, 24, 24), 7)
    empty = np.zeros_like(ref)
    structures = {"blob": [1]}
    for p, r in ((pred, ref), (empty, ref), (pred, empty), (empty, empty)):
        values = M.compute_case_metrics(p.astype(np.uint8), r.astype(np.uint8), SPACING, structures, M.ALL_METRICS)
        assert all(type(v) is float and math.isfinite(v) for v in values.values())


def test_surface_touching_image_border() -> None:
    # Foreground on the border: the border counts as background, as in MONAI.
    pred, ref = random_blobs((24, 20, 16), 8, threshold=-0.2)
    assert pred[0].any() and ref[-1].any()
    p, r, sp = as_monai(pred), as_monai(ref), list(SPACING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = float(HausdorffDistanceMetric(include_background=True, percentile=95)(p, r, spacing=sp)[0, 0])
        nsd = float(SurfaceDiceMetric([1.0], include_background=True)(p, r, spacing=sp)[0, 0])
    assert M.hd95(pred, ref, SPACING) == pytest.approx(hd, abs=1e-4)
    assert M.surface_dice(pred, ref, SPACING, 1.0) == pytest.approx(nsd, abs=1e-6)


def label_maps() -> tuple[np.ndarray, np.ndarray]:
    """Label maps with values 1 and 2 (and a stray value 7 that no structure uses)."""
    ref = np.zeros((30, 30, 30), dtype=np.int16)
    ref[5:15, 5:15, 5:15] = 1
    ref[15:22, 5:15, 5:15] = 2
    pred = np.zeros_like(ref)
    pred[6:15, 5:15, 5:16] = 1
    pred[15:24, 5:14, 5:15] = 2
    pred[27, 27, 27] = 7
    return pred, ref


def test_compute_case_metrics_classes_and_regions() -> None:
    pred, ref = label_maps()
    structures = {"one": {1}, "two": {2}, "whole": {1, 2}}
    names = ["dice", "hd95", "nsd", "lesion_f1"]
    out = M.compute_case_metrics(pred, ref, SPACING, structures, names, nsd_tolerance=2.0)
    assert list(out) == [f"{m}/{s}" for m in names for s in ("one", "two", "whole")]
    for name, values in structures.items():
        p, r = np.isin(pred, list(values)), np.isin(ref, list(values))
        assert out[f"dice/{name}"] == M.dice(p, r)
        assert out[f"hd95/{name}"] == M.hd95(p, r, SPACING)
        assert out[f"nsd/{name}"] == M.surface_dice(p, r, SPACING, 2.0)
        assert out[f"lesion_f1/{name}"] == M.lesion_wise_f1(p, r)
    assert out["dice/whole"] > out["dice/two"]


def test_per_structure_nsd_tolerance() -> None:
    pred, ref = label_maps()
    structures = {"one": [1], "two": [2]}
    tolerances = {"one": 0.5, "two": 3.0}
    out = M.compute_case_metrics(pred, ref, SPACING, structures, ["nsd"], nsd_tolerance=tolerances)
    assert out["nsd/one"] == M.surface_dice(pred == 1, ref == 1, SPACING, 0.5)
    assert out["nsd/two"] == M.surface_dice(pred == 2, ref == 2, SPACING, 3.0)
    with pytest.raises(InputError, match="two"):
        M.compute_case_metrics(pred, ref, SPACING, structures, ["nsd"], nsd_tolerance={"one": 1.0})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metrics": ["dice", "iou"]}, "unknown metric"),
        ({"metrics": []}, "no metrics"),
        ({"structures": {}}, "no structures"),
        ({"structures": {"a": []}}, "no label values"),
        ({"structures": {"a/b": [1]}}, "without '/'"),
        ({"spacing": (1.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, -1.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, float("nan"), 1.0)}, "spacing"),
        ({"spacing": "1mm"}, "spacing"),
        ({"nsd_tolerance": -1.0, "metrics": ["nsd"]}, "tolerance"),
    ],
)
def test_compute_case_metrics_rejects_bad_input(kwargs: dict, message: str) -> None:
    pred, ref = label_maps()
    args = {"spacing": SPACING, "structures": {"one": [1]}, "metrics": ["dice", "hd95"]} | kwargs
    with pytest.raises(InputError, match=message):
        M.compute_case_metrics(pred, ref, **args)


def test_shape_mismatch_is_input_error() -> None:
    with pytest.raises(InputError, match="shape"):
        M.dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(InputError, match="shape"):
        M.compute_case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), 1.0, {"a": [1]})


def test_label_spec_adapter() -> None:
    from factorseg.data.labels import LABEL_SPECS, LabelSpec

    assert M.structures_from_labels(LABEL_SPECS["brats2021"]) == {"TC": {1, 4}, "WT": {1, 2, 4}, "ET": {4}}
    spec = LabelSpec.classes_from_values([0, 1, 2], ["background", "anterior", "posterior"])
    assert M.structures_from_labels(spec) == {"anterior": {1}, "posterior": {2}}
    pred, ref = label_maps()
    via_spec = M.compute_case_metrics(pred, ref, SPACING, spec, ["dice", "hd95"])
    via_mapping = M.compute_case_metrics(pred, ref, SPACING, {"anterior": [1], "posterior": [2]}, ["dice", "hd95"])
    assert via_spec == via_mapping
    with pytest.raises(InputError, match="LabelSpec"):
        M.compute_case_metrics(pred, ref, SPACING, ["anterior"], ["dice"])  # type: ignore[arg-type]


def test_dice_from_counts_by_hand() -> None:
    assert M.dice_from_counts(3, 4, 6) == 0.6
    assert M.dice_from_counts(0, 0, 0) == 1.0  # both empty
    assert M.dice_from_counts(0, 5, 0) == 0.0  # empty reference, something predicted
    assert M.dice_from_counts(0, 0, 5) == 0.0  # missed reference


def test_validation_dice_scores_empty_references_as_evaluate_does() -> None:
    """The Dice that picks ``model_best.pt`` counts empty references with ``factorseg evaluate``'s rule."""
    from factorseg.data.labels import LabelSpec
    from factorseg.training.module import ValidationDice

    spec = LabelSpec.classes_from_values([0, 1], ["background", "lesion"])
    # Four cases of 4 x 1 x 1 voxels: label maps in the dataset's values, reference and prediction.
    refs = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]).reshape(4, 1, 4, 1, 1)
    preds = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]).reshape(4, 1, 4, 1, 1)
    known = [0.5, 1.0, 1.0, 0.0]  # overlap 1 of 2 + 2; both empty (twice); empty reference, one voxel predicted
    evaluated = [M.compute_case_metrics(p[0], r[0], 1.0, spec, ["dice"])["dice/lesion"] for p, r in zip(preds, refs)]
    assert evaluated == known
    logits = torch.from_numpy(np.concatenate([1 - preds, preds], axis=1).astype(np.float32)) * 4.0
    metric = ValidationDice()
    for case in range(4):  # one case per validation step, as sliding-window validation runs
        one = slice(case, case + 1)
        metric(spec.structure_masks(logits[one]), spec.target_masks(torch.from_numpy(refs[one])))
    assert metric.get_buffer().view(-1).tolist() == known
    assert float(metric.aggregate()[0]) == pytest.approx(0.625)  # not 0.5, the mean without the empty references
