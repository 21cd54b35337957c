"""Model registry: ``create(name, **overrides)`` builds our Factorizers and MONAI baselines alike."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from factorseg.models import baselines
from factorseg.models.factorizer import (
    FACTORIZERS,
    PRESETS,
    Factorizer,
    build_factorizer,
    count_flops,
    count_parameters,
    eval_mode,
    explicit_architecture,
    upgrade_legacy,
)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "swin_factorizer": partial(build_factorizer, "swin"),
    "local_factorizer": partial(build_factorizer, "local"),
    "global_factorizer": partial(build_factorizer, "global"),
    "segresnet": baselines.segresnet,
    "swinunetr": baselines.swinunetr,
    "unetr": baselines.unetr,
    "dynunet": baselines.dynunet,
    "basicunet": baselines.basicunet,
}


def available() -> list[str]:
    """Names accepted by ``create``."""
    return sorted(_REGISTRY)


def create(name: str, **overrides: Any) -> nn.Module:
    """Build model ``name``; Factorizers also take ``preset="brats"|"isles22"``.

    Every model takes ``in_channels`` and ``out_channels``; the remaining keywords go to its
    constructor, so recipes can override any of them.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(available())}")
    return _REGISTRY[name](**overrides)


__all__ = [
    "FACTORIZERS", "PRESETS", "Factorizer", "available", "count_flops", "count_parameters", "create", "eval_mode",
    "explicit_architecture", "upgrade_legacy",
]
