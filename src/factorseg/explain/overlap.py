"""Scoring component maps against a reference label: AUC and best Dice per component and label region,
so that "this component follows the tumour core" becomes a number."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from torch import Tensor

from factorseg.errors import InputError
from factorseg.data.labels import round_labels

__all__ = ["LabelValues", "component_label_overlap"]

#: Label regions to score: ``None`` (each nonzero value), values, or named groups such as ``{"core": [1, 3]}``.
LabelValues = Mapping[str, int | Sequence[int]] | Sequence[int] | None


def _regions(label: np.ndarray, label_values: LabelValues) -> dict[str, list[int]]:
    """Named label regions: each nonzero value (default), each listed value, or the given named groups."""
    if label_values is None:
        return {str(int(v)): [int(v)] for v in np.unique(label) if v != 0}
    if isinstance(label_values, Mapping):
        return {str(k): [int(v)] if np.isscalar(v) else [int(x) for x in v] for k, v in label_values.items()}
    return {str(int(v)): [int(v)] for v in label_values}


def _best_dice(sorted_scores: np.ndarray, sorted_pos: np.ndarray, positives: int) -> tuple[float, float]:
    """Best Dice of ``score >= t`` over all thresholds ``t``, and that threshold (scores sorted descending)."""
    # Only the last voxel of each run of tied scores is a possible cut.
    ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    tp = np.cumsum(sorted_pos)[ends]
    dice = 2.0 * tp / (ends + 1 + positives)
    best = int(np.argmax(dice))
    return float(dice[best]), float(sorted_scores[ends[best]])


def component_label_overlap(
    maps: np.ndarray | Tensor,
    label: np.ndarray,
    label_values: LabelValues = None,
    mask: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Score how well each component map ``(K, *spatial)`` follows each label region of ``label (*spatial)``.

    ``label_values``: ``None`` (every nonzero value on its own), a list of values, or named regions such as
    ``{"tumour core": [1, 3]}``. ``mask`` restricts the voxels scored (e.g. the brain, so that the
    background does not dominate). Per component and region the result holds:

    * ``auc``: area under the ROC curve of the map as a score for the region, computed as the
      Mann-Whitney U statistic with tied scores counted one half (1 = the map is higher in the region
      than everywhere else, 0.5 = no better than chance, 0 = the map avoids the region);
    * ``best_dice``: the highest Dice of ``map >= t`` over all thresholds ``t`` (an optimistic summary:
      the threshold is chosen with the reference), and that ``threshold``.

    Both are ``nan`` for a region without voxels (or covering every voxel, for the AUC).
    """
    maps = maps.detach().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps)
    label = round_labels(label)
    if maps.shape[1:] != label.shape:
        raise InputError(f"label of shape {label.shape} does not match component maps of shape {maps.shape[1:]}")
    if mask is None:
        keep = np.ones(label.shape, dtype=bool)
    else:
        keep = np.asarray(mask).astype(bool)
        if keep.shape != label.shape:
            raise InputError(f"mask of shape {keep.shape} does not match the label's shape {label.shape}")
    names = list(names) if names is not None else [str(k) for k in range(maps.shape[0])]
    if len(names) != maps.shape[0]:
        raise InputError(f"{len(names)} names given for {maps.shape[0]} component maps")
    regions = _regions(label, label_values)
    kept_label = label[keep]
    positives = {region: np.isin(kept_label, values) for region, values in regions.items()}
    rows: list[dict[str, Any]] = []
    for k in range(maps.shape[0]):
        scores = maps[k][keep].astype(np.float64)
        ranks = rankdata(scores)
        order = np.argsort(-scores, kind="stable")
        sorted_scores = scores[order]
        for region, pos in positives.items():
            n_pos = int(pos.sum())
            n_neg = pos.size - n_pos
            auc = best = threshold = math.nan
            if n_pos and n_neg:
                auc = float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
            if n_pos:
                best, threshold = _best_dice(sorted_scores, pos[order], n_pos)
            rows.append(
                {
                    "component": k, "name": names[k], "label": region, "values": regions[region],
                    "voxels": n_pos, "auc": auc, "best_dice": best, "threshold": threshold,
                }
            )
    return rows
