"""Per-case segmentation metrics on binary masks, with physical voxel spacing.

All functions take two arrays of the same shape, the prediction first and the reference second
(any non-zero voxel is foreground), and return a plain Python ``float``. Distances are in mm and
volumes in ml, computed from the voxel ``spacing`` (mm per axis, in array-axis order), so
anisotropic grids are handled exactly.

Metric names used as keys (``"<metric>/<structure>"``) by :func:`compute_case_metrics`:

* ``dice``: 2|P∩R| / (|P|+|R|) (higher is better).
* ``hd95``: 95th-percentile symmetric Hausdorff distance in mm (lower).
* ``nsd``: normalised surface Dice at a tolerance in mm (higher).
* ``sensitivity``: |P∩R| / |R| (higher).
* ``precision``: |P∩R| / |P| (higher).
* ``avd``: absolute volume difference ||P| - |R|| in ml (lower).
* ``lesion_f1``: ISLES'22 lesion-wise F1 over 26-connected components (higher).
* ``lesion_count_diff``: ISLES'22 absolute difference of the numbers of components (lower).

Surfaces. The surface of a mask is its set of edge voxels, ``mask & ~binary_erosion(mask)``
(6-connected erosion, the image border counts as background), as in MONAI's
``HausdorffDistanceMetric`` and ``SurfaceDiceMetric`` with their default ``use_subvoxels=False``.
Distances between edge-voxel centres are Euclidean in mm. ``hd95`` is the larger of the two
directed 95th percentiles (linear interpolation), as in MONAI and DeepMind's ``surface-distance``.
``nsd`` is the fraction of edge voxels of both masks lying within the tolerance of the other
mask's surface (Nikolov et al. 2021, counted in edge voxels as MONAI does, not in surfel areas).

Empty masks (no NaN or inf is ever returned):

* Both masks empty: every metric takes its best value: ``dice``, ``nsd``, ``sensitivity``,
  ``precision``, ``lesion_f1`` = 1; ``hd95``, ``avd``, ``lesion_count_diff`` = 0. This is the
  BraTS convention for Dice/HD95 and the ISLES'22 one for Dice and lesion F1 (``empty_value=1``
  in the official ISLES'22 evaluation code).
* Exactly one mask empty: overlap metrics take their worst value (``dice``, ``nsd``,
  ``sensitivity``, ``precision``, ``lesion_f1`` = 0; sensitivity and precision whose denominator
  is zero are set to 0 here rather than left undefined), and ``hd95`` is the diagonal of the
  image extent in mm, ``sqrt(sum((shape_i * spacing_i) ** 2))``. For the BraTS grid
  (240 x 240 x 155 at 1 mm) this is the 373.13 mm penalty BraTS uses; for other grids it is an
  upper bound on any distance inside the image, so the penalty scales with the field of view.
  ``avd`` and ``lesion_count_diff`` are always well defined.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from factorseg.errors import InputError

if TYPE_CHECKING:
    from factorseg.data.labels import LabelSpec

__all__ = [
    "ALL_METRICS",
    "CONVENTIONS",
    "DEFAULT_METRICS",
    "HIGHER_IS_BETTER",
    "abs_volume_difference",
    "check_metric_names",
    "compute_case_metrics",
    "dice",
    "dice_from_counts",
    "hd95",
    "image_diagonal_mm",
    "lesion_count_difference",
    "lesion_wise_f1",
    "precision",
    "resolve_nsd_tolerance",
    "resolve_structures",
    "sensitivity",
    "structures_from_labels",
    "surface_dice",
]

Spacing = float | Sequence[float] | np.ndarray

#: Whether a larger value is better, per metric name (also the list of valid names).
HIGHER_IS_BETTER: dict[str, bool] = {
    "dice": True,
    "hd95": False,
    "nsd": True,
    "sensitivity": True,
    "precision": True,
    "avd": False,
    "lesion_f1": True,
    "lesion_count_diff": False,
}
ALL_METRICS: tuple[str, ...] = tuple(HIGHER_IS_BETTER)
#: Metrics computed when none are requested (the lesion-wise ones are opt-in, for lesion tasks).
DEFAULT_METRICS: tuple[str, ...] = ("dice", "hd95", "nsd", "sensitivity", "precision", "avd")

#: One-line statements of the conventions, recorded with every evaluation summary.
CONVENTIONS: dict[str, str] = {
    "surface": "edge voxels = mask & ~binary_erosion(mask) (6-connectivity, border is background); "
    "Euclidean distances between voxel centres in mm",
    "hd95": "max of the two directed 95th percentiles of edge-voxel distances (linear interpolation)",
    "nsd": "fraction of edge voxels of both masks within the tolerance (mm) of the other surface",
    "lesions": "connected components with 26-connectivity; a reference lesion is detected (TP) if any "
    "predicted voxel overlaps it, a predicted lesion is a false positive if it overlaps no reference "
    "voxel; F1 = 2TP / (2TP + FP + FN); lesion_count_diff = |#pred - #ref| (ISLES'22)",
    "both_empty": "best value: dice, nsd, sensitivity, precision, lesion_f1 = 1; hd95, avd, "
    "lesion_count_diff = 0",
    "one_empty": "dice, nsd, sensitivity, precision, lesion_f1 = 0; hd95 = image diagonal in mm "
    "(373.13 for 240x240x155 at 1 mm, as BraTS)",
    "units": "hd95 in mm, avd in ml, nsd tolerance in mm",
}


def _as_spacing(spacing: Spacing, ndim: int) -> np.ndarray:
    """Return spacing as ``ndim`` positive finite floats (a scalar means isotropic)."""
    try:
        arr = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"voxel spacing {spacing!r} must be {ndim} positive finite numbers (mm)") from None
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.size != ndim or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"voxel spacing {np.asarray(spacing).tolist()} must be {ndim} positive finite numbers (mm)")
    return arr


def image_diagonal_mm(shape: Sequence[int], spacing: Spacing) -> float:
    """Diagonal of the image extent in mm, the HD95 value used when exactly one mask is empty."""
    sp = _as_spacing(spacing, len(shape))
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=np.float64) * sp) ** 2)))


class _Pair:
    """A prediction/reference mask pair with lazily computed, shared intermediate quantities."""

    def __init__(self, pred: np.ndarray, ref: np.ndarray, spacing: Spacing | None = None) -> None:
        pred = np.asarray(pred)
        ref = np.asarray(ref)
        if pred.shape != ref.shape:
            raise InputError(f"prediction shape {pred.shape} does not match reference shape {ref.shape}")
        if pred.ndim == 0:
            raise InputError("masks must have at least one dimension")
        self.pred = pred.astype(bool, copy=False)
        self.ref = ref.astype(bool, copy=False)
        self._spacing = spacing

    @cached_property
    def spacing(self) -> np.ndarray:
        """Validated voxel spacing in mm (1 mm when none was given)."""
        return _as_spacing(1.0 if self._spacing is None else self._spacing, self.pred.ndim)

    @cached_property
    def counts(self) -> tuple[int, int, int]:
        """Voxel counts ``(|P∩R|, |P|, |R|)``."""
        return (
            int(np.count_nonzero(self.pred & self.ref)),
            int(np.count_nonzero(self.pred)),
            int(np.count_nonzero(self.ref)),
        )

    @cached_property
    def cropped(self) -> tuple[np.ndarray, np.ndarray]:
        """Both masks cropped to their union's bounding box (two empty arrays if the union is empty).

        No metric changes: a foreground voxel on the box's faces is on the image border or has a
        background neighbour outside the box, so it is an edge voxel either way.
        """
        boxes = ndimage.find_objects((self.pred | self.ref).astype(np.uint8))
        if not boxes:
            return np.zeros((0,) * self.pred.ndim, bool), np.zeros((0,) * self.pred.ndim, bool)
        return self.pred[boxes[0]], self.ref[boxes[0]]

    @cached_property
    def surface_distances(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Distances (mm) from each pred edge voxel to the ref surface and vice versa; None if a mask is empty."""
        _, n_pred, n_ref = self.counts
        if n_pred == 0 or n_ref == 0:
            return None
        pred, ref = self.cropped
        edges_pred = pred & ~ndimage.binary_erosion(pred)
        edges_ref = ref & ~ndimage.binary_erosion(ref)
        to_ref = ndimage.distance_transform_edt(~edges_ref, sampling=self.spacing)
        to_pred = ndimage.distance_transform_edt(~edges_pred, sampling=self.spacing)
        return to_ref[edges_pred], to_pred[edges_ref]

    @cached_property
    def lesions(self) -> tuple[int, int, int, int, int]:
        """ISLES'22 lesion counts ``(TP, FP, FN, #pred lesions, #ref lesions)`` with 26-connectivity."""
        pred, ref = self.cropped
        structure = np.ones((3,) * pred.ndim, dtype=bool)
        pred_lab, n_pred = ndimage.label(pred, structure=structure)
        ref_lab, n_ref = ndimage.label(ref, structure=structure)
        overlap = pred & ref
        tp = int(np.unique(ref_lab[overlap]).size)
        fp = n_pred - int(np.unique(pred_lab[overlap]).size)
        return tp, fp, n_ref - tp, int(n_pred), int(n_ref)


def _ratio(num: int, den: int, both_empty: bool) -> float:
    """``num / den``, or 1 when both masks are empty and 0 for any other zero denominator."""
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def dice_from_counts(intersection: int, pred_voxels: int, ref_voxels: int) -> float:
    """Dice from the voxel counts |P∩R|, |P|, |R| with this module's empty-mask convention: 1 when both masks
    are empty, 0 when one is. The one home of that rule: ``factorseg evaluate`` and the validation Dice that
    picks ``model_best.pt`` both score through it."""
    total = pred_voxels + ref_voxels
    return _ratio(2 * intersection, total, total == 0)


def _dice(p: _Pair, tolerance: float) -> float:
    return dice_from_counts(*p.counts)


def _sensitivity(p: _Pair, tolerance: float) -> float:
    inter, n_pred, n_ref = p.counts
    return _ratio(inter, n_ref, n_pred + n_ref == 0)


def _precision(p: _Pair, tolerance: float) -> float:
    inter, n_pred, n_ref = p.counts
    return _ratio(inter, n_pred, n_pred + n_ref == 0)


def _hd95(p: _Pair, tolerance: float) -> float:
    _, n_pred, n_ref = p.counts
    dists = p.surface_distances
    if dists is None:
        return 0.0 if n_pred + n_ref == 0 else image_diagonal_mm(p.pred.shape, p.spacing)
    return float(max(np.percentile(dists[0], 95), np.percentile(dists[1], 95)))


def _nsd(p: _Pair, tolerance: float) -> float:
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise InputError(f"surface Dice tolerance {tolerance} must be a finite number >= 0 (mm)")
    _, n_pred, n_ref = p.counts
    dists = p.surface_distances
    if dists is None:
        return 1.0 if n_pred + n_ref == 0 else 0.0
    within = np.count_nonzero(dists[0] <= tolerance) + np.count_nonzero(dists[1] <= tolerance)
    return float(within / (dists[0].size + dists[1].size))


def _avd(p: _Pair, tolerance: float) -> float:
    _, n_pred, n_ref = p.counts
    return float(abs(n_pred - n_ref) * np.prod(p.spacing) / 1000.0)


def _lesion_f1(p: _Pair, tolerance: float) -> float:
    tp, fp, fn, _, _ = p.lesions
    return _ratio(2 * tp, 2 * tp + fp + fn, tp + fp + fn == 0)


def _lesion_count_diff(p: _Pair, tolerance: float) -> float:
    *_, n_pred, n_ref = p.lesions
    return float(abs(n_pred - n_ref))


_METRIC_FUNCS: dict[str, Callable[[_Pair, float], float]] = {
    "dice": _dice,
    "hd95": _hd95,
    "nsd": _nsd,
    "sensitivity": _sensitivity,
    "precision": _precision,
    "avd": _avd,
    "lesion_f1": _lesion_f1,
    "lesion_count_diff": _lesion_count_diff,
}


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient; 1 when both masks are empty."""
    return _dice(_Pair(pred, ref), 0.0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = 1.0) -> float:
    """95th-percentile symmetric Hausdorff distance in mm; 0 if both empty, the image diagonal if one is."""
    return _hd95(_Pair(pred, ref, spacing), 0.0)


def surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = 1.0, tolerance_mm: float = 1.0) -> float:
    """Normalised surface Dice at ``tolerance_mm``; 1 if both masks are empty, 0 if one is."""
    return _nsd(_Pair(pred, ref, spacing), float(tolerance_mm))


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    """Voxel sensitivity (recall) |P∩R|/|R|; 1 if both masks are empty, 0 if only the reference is."""
    return _sensitivity(_Pair(pred, ref), 0.0)


def precision(pred: np.ndarray, ref: np.ndarray) -> float:
    """Voxel precision |P∩R|/|P|; 1 if both masks are empty, 0 if only the prediction is."""
    return _precision(_Pair(pred, ref), 0.0)


def abs_volume_difference(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = 1.0) -> float:
    """Absolute difference of the mask volumes in ml (1 ml = 1000 mm^3)."""
    return _avd(_Pair(pred, ref, spacing), 0.0)


def lesion_wise_f1(pred: np.ndarray, ref: np.ndarray) -> float:
    """ISLES'22 lesion-wise F1 over 26-connected components; 1 when neither mask has a lesion."""
    return _lesion_f1(_Pair(pred, ref), 0.0)


def lesion_count_difference(pred: np.ndarray, ref: np.ndarray) -> float:
    """ISLES'22 absolute difference between the numbers of 26-connected components."""
    return _lesion_count_diff(_Pair(pred, ref), 0.0)


def structures_from_labels(labels: LabelSpec) -> dict[str, set[int]]:
    """Map each evaluated structure name to the dataset label values that make it up.

    Classes: every foreground class against the rest (the background is skipped); regions: each region's
    value set (e.g. BraTS ``TC`` = {1, 3}). See :meth:`LabelSpec.structures`.
    """
    from factorseg.data.labels import LabelSpec as _LabelSpec  # deferred: the label module imports torch

    if not isinstance(labels, _LabelSpec):
        raise InputError(f"expected a LabelSpec or a {{name: label values}} mapping, got {type(labels).__name__}")
    return labels.structures()


def resolve_structures(structures: Mapping[str, Collection[int]] | LabelSpec) -> dict[str, tuple[int, ...]]:
    """Check a ``{name: label values}`` mapping (or convert a ``LabelSpec``); values come back sorted."""
    if not isinstance(structures, Mapping):
        structures = structures_from_labels(structures)
    if not structures:
        raise InputError("no structures to evaluate: give at least one {name: label values} entry")
    out: dict[str, tuple[int, ...]] = {}
    for name, values in structures.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise InputError(f"structure name {name!r} must be a non-empty string without '/'")
        vals = tuple(sorted({int(v) for v in values}))
        if not vals:
            raise InputError(f"structure {name!r} has no label values")
        out[name] = vals
    return out


def check_metric_names(metrics: Sequence[str]) -> list[str]:
    """Check metric names against :data:`ALL_METRICS`, keeping their order and dropping repeats."""
    if isinstance(metrics, str):
        metrics = [metrics]
    names = list(dict.fromkeys(metrics))
    if not names:
        raise InputError(f"no metrics requested; choose from {', '.join(ALL_METRICS)}")
    unknown = [m for m in names if m not in _METRIC_FUNCS]
    if unknown:
        raise InputError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(ALL_METRICS)}")
    return names


def resolve_nsd_tolerance(nsd_tolerance: float | Mapping[str, float], structures: Collection[str]) -> dict[str, float]:
    """One surface Dice tolerance (mm) per structure, from a single value or a per-structure mapping."""
    if isinstance(nsd_tolerance, Mapping):
        missing = [s for s in structures if s not in nsd_tolerance]
        if missing:
            raise InputError(f"nsd_tolerance has no value for structure(s) {', '.join(missing)}")
        tolerances = {s: float(nsd_tolerance[s]) for s in structures}
    else:
        tolerances = dict.fromkeys(structures, float(nsd_tolerance))
    for name, tol in tolerances.items():
        if not (np.isfinite(tol) and tol >= 0):
            raise InputError(f"surface Dice tolerance {tol} for {name!r} must be a finite number >= 0 (mm)")
    return tolerances


def _mask_of(label: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Voxels of ``label`` holding any of the (few) ``values``; faster than ``np.isin`` on large volumes."""
    mask = label == values[0]
    for value in values[1:]:
        mask |= label == value
    return mask


def compute_case_metrics(
    pred_label: np.ndarray,
    ref_label: np.ndarray,
    spacing: Spacing,
    structures: Mapping[str, Collection[int]] | LabelSpec,
    metrics: Sequence[str] = DEFAULT_METRICS,
    nsd_tolerance: float | Mapping[str, float] = 1.0,
) -> dict[str, float]:
    """Evaluate every requested metric for every structure of one case.

    Args:
        pred_label: predicted label map with the dataset's own label values.
        ref_label: reference label map, same shape.
        spacing: voxel spacing in mm per array axis (a scalar means isotropic).
        structures: ``{name: label values}`` (a structure is the union of its values), or a
            ``LabelSpec`` turned into one by :func:`structures_from_labels`.
        metrics: metric names from :data:`ALL_METRICS`.
        nsd_tolerance: surface Dice tolerance in mm, one for all structures or one per structure.

    Returns:
        ``{"<metric>/<structure>": value}``, metric-major in the order requested.
    """
    values_by_name = resolve_structures(structures)
    names = check_metric_names(metrics)
    tolerances = resolve_nsd_tolerance(nsd_tolerance, values_by_name)
    pred_label = np.asarray(pred_label)
    ref_label = np.asarray(ref_label)
    if pred_label.shape != ref_label.shape:
        raise InputError(f"prediction shape {pred_label.shape} does not match reference shape {ref_label.shape}")
    sp = _as_spacing(spacing, ref_label.ndim)

    results: dict[str, float] = {}
    for structure, values in values_by_name.items():
        pair = _Pair(_mask_of(pred_label, values), _mask_of(ref_label, values), sp)
        for metric in names:
            results[f"{metric}/{structure}"] = float(_METRIC_FUNCS[metric](pair, tolerances[structure]))
    return {f"{m}/{s}": results[f"{m}/{s}"] for m in names for s in values_by_name}
