"""Evaluation: the field's metrics per case, and whole prediction folders scored against references.

* :mod:`factorseg.evaluation.metrics`: per-case Dice, HD95, surface Dice (NSD), sensitivity, precision,
  absolute volume difference, lesion-wise F1 and lesion count, with BraTS / ISLES'22 empty-mask conventions
  (:func:`dice_from_counts` is the one home of the Dice rule, used by validation too);
* :mod:`factorseg.evaluation.folders`: ``factorseg evaluate``: pairing prediction and reference files,
  per-case CSV, summary JSON and the printed table (:func:`evaluate_folders`).
"""

from __future__ import annotations

from factorseg._lazy import lazy_exports

_MODULES = {
    "metrics": ("compute_case_metrics", "dice_from_counts"),
    "folders": ("EvaluationResult", "evaluate_folders"),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
