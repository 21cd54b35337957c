"""Cross-validation splits: deterministic K-fold partitions of case ids, stored as JSON and reused.

The JSON file uses nnU-Net's ``splits_final.json`` layout (a list of ``{"train": [...], "val": [...]}``), so
splits can be shared between the two tools.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from factorseg.errors import InputError
from factorseg.io import write_json

__all__ = ["load_or_create_splits", "make_splits"]


def make_splits(case_ids: Sequence[str], folds: int = 5, seed: int = 0) -> list[dict[str, list[str]]]:
    """K-fold splits: each id is validated in exactly one fold; the same ids and seed give the same splits.

    Ids are sorted before shuffling, so the input order does not matter. Lists inside each fold are sorted.
    """
    ids = sorted(str(c) for c in case_ids)
    if len(set(ids)) != len(ids):
        dup = sorted(c for c, n in Counter(ids).items() if n > 1)
        raise InputError(f"duplicate case ids: {dup[:5]}")
    if folds < 2:
        raise InputError(f"folds must be >= 2, got {folds}")
    if len(ids) < folds:
        raise InputError(f"cannot make {folds} folds from {len(ids)} cases")
    order = np.random.default_rng(seed).permutation(len(ids))
    chunks = np.array_split(order, folds)
    splits = []
    for k in range(folds):
        val = sorted(ids[i] for i in chunks[k])
        train = sorted(ids[i] for j, c in enumerate(chunks) if j != k for i in c)
        splits.append({"train": train, "val": val})
    return splits


def _check_stored(splits: object, path: Path, ids: set[str], folds: int) -> list[dict[str, list[str]]]:
    """Validate a stored splits file against the dataset's ids and the requested number of folds."""
    if not isinstance(splits, list) or not all(
        isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list) for s in splits
    ):
        raise InputError(f"{path}: expected a list of {{'train': [...], 'val': [...]}} folds")
    if len(splits) != folds:
        raise InputError(f"{path} holds {len(splits)} folds but {folds} were requested; delete it or change folds")
    for k, s in enumerate(splits):
        train, val = set(s["train"]), set(s["val"])
        if train & val:
            raise InputError(f"{path}: fold {k} has ids in both train and val, e.g. {sorted(train & val)[:3]}")
        if train | val != ids:
            missing, extra = sorted(ids - (train | val)), sorted((train | val) - ids)
            raise InputError(
                f"{path}: fold {k} does not match the dataset (missing {len(missing)} ids, e.g. {missing[:3]}; "
                f"unknown {len(extra)} ids, e.g. {extra[:3]}); delete the file to recreate the splits"
            )
    return [{"train": list(s["train"]), "val": list(s["val"])} for s in splits]


def load_or_create_splits(
    path: str | Path, case_ids: Sequence[str], folds: int = 5, seed: int = 0
) -> list[dict[str, list[str]]]:
    """Read the splits at ``path`` (checked against ``case_ids``), or create them with :func:`make_splits`."""
    path = Path(path)
    ids = {str(c) for c in case_ids}
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        return _check_stored(stored, path, ids, folds)
    splits = make_splits(case_ids, folds, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, splits, overwrite=True)  # a file written meanwhile holds the same splits (same ids, seed)
    return splits
