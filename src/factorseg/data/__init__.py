"""Data handling: label conventions, dataset layouts, transform pipelines and cross-validation splits."""

from factorseg.data.formats import FORMATS, DatasetInfo, cases_from_paths, detect_format, load_dataset
from factorseg.data.labels import LABEL_SPECS, LabelSpec, get_label_spec
from factorseg.data.splits import load_or_create_splits, make_splits
from factorseg.data.transforms import (
    LabelToTargetd,
    LoadCased,
    TransformConfig,
    infer_transforms,
    invert_prediction,
    train_transforms,
    val_transforms,
)

__all__ = [
    "FORMATS",
    "LABEL_SPECS",
    "DatasetInfo",
    "LabelSpec",
    "LabelToTargetd",
    "LoadCased",
    "TransformConfig",
    "cases_from_paths",
    "detect_format",
    "get_label_spec",
    "infer_transforms",
    "invert_prediction",
    "load_dataset",
    "load_or_create_splits",
    "make_splits",
    "train_transforms",
    "val_transforms",
]
