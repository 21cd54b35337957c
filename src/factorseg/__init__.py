"""factorseg: Factorizer models for 3D medical image segmentation.

``factorseg.Predictor`` segments scans from Python (see :mod:`factorseg.inference.predictor`); ``factorseg.models``
builds networks. Both load on first use, so that ``import factorseg`` stays fast (no torch until then).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from factorseg import models
    from factorseg.inference.predictor import Prediction, Predictor

_LAZY = {"Predictor": "factorseg.inference.predictor", "Prediction": "factorseg.inference.predictor"}
_SUBMODULES = ("models",)


def __getattr__(name: str) -> Any:
    """``factorseg.Predictor``, ``factorseg.Prediction`` and ``factorseg.models``, imported when first used."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"factorseg.{name}")
    raise AttributeError(f"module 'factorseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_SUBMODULES])


__all__ = ["Prediction", "Predictor", "__version__", "models"]
