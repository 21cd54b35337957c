"""Evaluate a folder of predicted label maps against a folder of reference label maps.

Files are paired by case id: the file name without ``.nii.gz``/``.nii``. A prediction named after
an nnU-Net image (``case_0000.nii.gz``) is paired with the reference ``case.nii.gz`` when no
prediction has the exact name. Both folders are read flat (no sub-folders); hidden files are skipped.
Each pair must share its voxel grid (shape and affine); distances use the reference's voxel spacing
(the column norms of its affine, i.e. the NIfTI header's voxel size). Metrics and their empty-mask
conventions are those of :mod:`factorseg.evaluation.metrics`.

Outputs (written atomically into ``out_dir``):

* ``per_case.csv``: one row per reference case: ``case``, ``prediction_missing`` (0/1), then one
  column per ``<metric>/<structure>``.
* ``summary.json``: per column the mean, sample standard deviation (ddof=1; 0 for a single case),
  median, min and max over all cases, the number of cases, missing and unmatched file names, the
  settings and the metric conventions.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from factorseg import __version__
from factorseg.console import output_console
from factorseg.errors import InputError
from factorseg.data.labels import LabelSpec, round_labels
from factorseg.io import atomic_write, is_nifti_name, read_image, split_channel_suffix, strip_nifti, write_json
from factorseg.evaluation.metrics import (
    CONVENTIONS,
    DEFAULT_METRICS,
    HIGHER_IS_BETTER,
    check_metric_names,
    compute_case_metrics,
    resolve_nsd_tolerance,
    resolve_structures,
)

__all__ = ["EvaluationResult", "evaluate_folders", "find_nifti_cases", "pair_cases"]

PER_CASE_CSV = "per_case.csv"
SUMMARY_JSON = "summary.json"

# Largest allowed difference between the affines of a prediction and its reference (mm).
_AFFINE_ATOL_MM = 1e-3
_UNITS = {"hd95": " (mm)", "avd": " (ml)"}


def find_nifti_cases(folder: str | Path, what: str) -> dict[str, Path]:
    """Map case id -> NIfTI file for the files directly inside ``folder``.

    ``what`` names the folder's role in error messages ("prediction", "reference").
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder} does not exist or is not a folder")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if not is_nifti_name(path.name):
            continue
        case = strip_nifti(path.name)
        if case in cases:
            raise InputError(f"{what} folder {folder}: case {case!r} has two files ({cases[case].name}, {path.name})")
        cases[case] = path
    return cases


def pair_cases(preds: Mapping[str, Path], refs: Mapping[str, Path]) -> tuple[dict[str, Path], list[str]]:
    """Pair predictions to reference case ids; return ``({ref id: pred path}, unmatched pred names)``.

    An exact id match wins; otherwise a trailing ``_XXXX`` channel suffix is dropped from the prediction id.
    """
    paired: dict[str, Path] = {}
    unmatched: list[str] = []
    for case, path in preds.items():
        if case in refs:
            target = case
        else:
            target, channel = split_channel_suffix(case)
            if channel is None or target not in refs or target in preds:
                unmatched.append(path.name)
                continue
        if target in paired:
            raise InputError(f"case {target!r} has two predictions ({paired[target].name}, {path.name})")
        paired[target] = path
    return paired, unmatched


def _read_label(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a 3D label map as int64 values with its affine and voxel spacing (mm)."""
    volume = read_image(path)
    return round_labels(volume.array, str(path)), volume.affine, volume.spacing


@dataclass(frozen=True)
class _CaseJob:
    """Everything one worker needs to score one case (picklable)."""

    case: str
    pred_path: Path | None
    ref_path: Path
    structures: dict[str, list[int]]
    metrics: tuple[str, ...]
    nsd_tolerance: dict[str, float]
    label_spec: LabelSpec | None


def _evaluate_case(job: _CaseJob) -> dict[str, float]:
    """Score one case; a missing prediction is scored as an empty label map."""
    ref, ref_affine, spacing = _read_label(job.ref_path)
    if job.pred_path is None:
        pred = np.zeros_like(ref)
    else:
        pred, pred_affine, _ = _read_label(job.pred_path)
        if pred.shape != ref.shape:
            raise InputError(
                f"case {job.case}: prediction {job.pred_path.name} has shape {pred.shape}, "
                f"reference {job.ref_path.name} has {ref.shape}"
            )
        diff = float(np.max(np.abs(pred_affine - ref_affine)))
        if diff > _AFFINE_ATOL_MM:
            raise InputError(
                f"case {job.case}: prediction {job.pred_path.name} is not on the reference grid "
                f"(affines differ by up to {diff:.3g} mm); resample it to the reference first"
            )
        if job.label_spec is not None:
            job.label_spec.validate(pred, source=str(job.pred_path))
    if job.label_spec is not None:
        job.label_spec.validate(ref, source=str(job.ref_path))
    return compute_case_metrics(pred, ref, spacing, job.structures, job.metrics, job.nsd_tolerance)


def _stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std (0 for one value), median, min and max of finite per-case values."""
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "median": float(np.median(arr)),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


@dataclass
class EvaluationResult:
    """Per-case values, their summary and where they were written."""

    per_case: dict[str, dict[str, float]]
    summary: dict[str, dict[str, float]]
    structures: dict[str, list[int]]
    metrics: list[str]
    missing: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    per_case_csv: Path | None = None
    summary_json: Path | None = None

    @property
    def n_cases(self) -> int:
        """Number of evaluated reference cases (missing predictions included)."""
        return len(self.per_case)

    def table(self) -> Table:
        """Readable ``mean ± std`` table: one row per structure, one column per metric."""
        table = Table(title=f"Evaluation of {self.n_cases} cases (mean ± std)")
        table.add_column("structure", style="bold")
        for metric in self.metrics:
            arrow = "↑" if HIGHER_IS_BETTER[metric] else "↓"
            table.add_column(f"{metric}{_UNITS.get(metric, '')} {arrow}", justify="right")
        for structure in self.structures:
            cells = []
            for metric in self.metrics:
                stats = self.summary[f"{metric}/{structure}"]
                digits = 2 if metric in ("hd95", "avd", "lesion_count_diff") else 3
                cells.append(f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}")
            table.add_row(structure, *cells)
        if self.missing:
            table.caption = f"{len(self.missing)} missing prediction(s) scored as empty: {', '.join(self.missing)}"
        return table

    def print_table(self, console: Console | None = None) -> None:
        """Print :meth:`table` to ``console`` (default: stdout, in full when it is not a terminal)."""
        (console or output_console()).print(self.table())


def _csv_bytes(result: EvaluationResult, columns: list[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "prediction_missing", *columns])
    for case, values in result.per_case.items():
        writer.writerow([case, int(case in result.missing), *(repr(values[c]) for c in columns)])
    return buffer.getvalue().encode()


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: LabelSpec | Mapping[str, Collection[int]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    out_dir: str | Path | None = None,
    nsd_tolerance: float | Mapping[str, float] = 1.0,
    allow_missing: bool = False,
    num_workers: int = 0,
) -> EvaluationResult:
    """Score every reference case in ``ref_dir`` against its prediction in ``pred_dir``.

    Args:
        pred_dir: folder of predicted label maps (dataset label values).
        ref_dir: folder of reference label maps; every file in it is a case to evaluate.
        labels: a ``LabelSpec`` (its values are also checked in every file) or ``{name: label values}``.
        metrics: metric names (see :data:`factorseg.evaluation.metrics.ALL_METRICS`).
        out_dir: where to write ``per_case.csv`` and ``summary.json`` (created if needed); None writes nothing.
        nsd_tolerance: surface Dice tolerance in mm, one value or one per structure.
        allow_missing: score a reference case without prediction as an empty prediction (and list it)
            instead of raising InputError.
        num_workers: processes scoring cases in parallel; 0 scores them in this process.
    """
    label_spec = None if isinstance(labels, Mapping) else labels
    structures = {name: list(values) for name, values in resolve_structures(labels).items()}
    metric_names = check_metric_names(metrics)
    tolerance = resolve_nsd_tolerance(nsd_tolerance, structures)
    if num_workers < 0:
        raise InputError(f"num_workers must be >= 0, got {num_workers}")
    out = None if out_dir is None else Path(out_dir)
    if out is not None and out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} exists and is not a folder")

    refs = find_nifti_cases(ref_dir, "reference")
    if not refs:
        raise InputError(f"reference folder {ref_dir} contains no .nii/.nii.gz files")
    preds = find_nifti_cases(pred_dir, "prediction")
    paired, unmatched = pair_cases(preds, refs)
    missing = [case for case in refs if case not in paired]
    if missing and not allow_missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"no prediction in {pred_dir} for {len(missing)} reference case(s): {shown}")

    jobs = [
        _CaseJob(case, paired.get(case), path, structures, tuple(metric_names), tolerance, label_spec)
        for case, path in refs.items()
    ]
    if num_workers > 0 and len(jobs) > 1:
        # spawn: safe when the caller has torch threads running (fork is not).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(num_workers, len(jobs)), mp_context=context) as pool:
            values = list(pool.map(_evaluate_case, jobs))
    else:
        values = [_evaluate_case(job) for job in jobs]

    per_case = {job.case: v for job, v in zip(jobs, values)}
    columns = list(values[0])
    summary = {column: _stats([v[column] for v in values]) for column in columns}
    result = EvaluationResult(per_case, summary, structures, metric_names, missing, unmatched)

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        document: dict[str, Any] = {
            "n_cases": result.n_cases,
            "metrics": summary,
            "missing_predictions": missing,
            "unmatched_predictions": unmatched,
            "settings": {
                "metrics": metric_names,
                "structures": structures,
                "nsd_tolerance_mm": tolerance,
                "label_convention": None if label_spec is None else label_spec.convention,
                "std": "sample standard deviation (ddof=1); 0 for a single case",
            },
            "conventions": CONVENTIONS,
            "factorseg_version": __version__,
        }
        result.per_case_csv = atomic_write(out / PER_CASE_CSV, _csv_bytes(result, columns), overwrite=True)
        result.summary_json = write_json(out / SUMMARY_JSON, document, overwrite=True)
    return result
