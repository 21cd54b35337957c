"""Trained-model files: plain-data config + weights, loaded without unpickling code.

A bundle holds what prediction needs and nothing that executes: the model's registry name and
constructor arguments, the label convention, the preprocessing, the channel names, inference
defaults and the ``state_dict``. Lightning ``.ckpt`` files from ``factorseg train`` load too
(``weights_only=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from factorseg import models
from factorseg.data.labels import LabelSpec
from factorseg.data.transforms import TransformConfig
from factorseg.errors import InputError
from factorseg.io import load_checkpoint, save_checkpoint

BUNDLE_KEYS = ("model", "labels", "transforms", "channels", "inference")


def build_model(model_cfg: dict[str, Any]) -> nn.Module:
    """A registry model from ``{"name": ..., **constructor arguments}``."""
    kwargs = dict(model_cfg)
    name = kwargs.pop("name", None)
    if not name:
        raise InputError("model config has no 'name'")
    try:
        return models.create(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise InputError(f"cannot build model {name!r}: {exc}") from exc


@dataclass
class LoadedModel:
    """A model ready for inference and the settings it was trained with."""

    model: nn.Module
    config: dict[str, Any]
    path: Path

    @property
    def labels(self) -> LabelSpec:
        return LabelSpec.from_dict(self.config["labels"])

    @property
    def transforms(self) -> TransformConfig:
        return TransformConfig.from_dict(self.config["transforms"])

    @property
    def channels(self) -> list[str]:
        return list(self.config["channels"])


def bundle_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved training config that a bundle keeps."""
    return {key: config[key] for key in BUNDLE_KEYS}


def save_bundle(config: dict[str, Any], model: nn.Module, path: Path, overwrite: bool = True) -> Path:
    """Write a bundle (atomic) from a resolved config and a model."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_checkpoint({"config": bundle_config(config), "state_dict": state}, path, overwrite=overwrite)


def _from_lightning(path: Path) -> dict[str, Any]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable or unsafe file
        raise InputError(f"{path}: is not a factorseg checkpoint or contains untrusted objects (refused to unpickle)") from exc
    config = raw.get("hyper_parameters", {}).get("config") if isinstance(raw, dict) else None
    if not isinstance(config, dict):
        raise InputError(f"{path}: Lightning checkpoint without a factorseg config")
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in raw["state_dict"].items() if k.startswith(prefix)}
    return {"config": bundle_config(config), "state_dict": state}


def load_bundle(path: str | Path) -> LoadedModel:
    """Load a bundle (``.pt``) or a Lightning checkpoint (``.ckpt``) for inference, in eval mode."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model file not found")
    raw = _from_lightning(path) if path.suffix == ".ckpt" else load_checkpoint(path)
    config = raw.get("config")
    if not isinstance(config, dict) or any(k not in config for k in BUNDLE_KEYS):
        raise InputError(f"{path}: not a factorseg model bundle (missing config entries)")
    model = build_model(config["model"])
    try:
        model.load_state_dict(raw["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit the model it describes ({str(exc).splitlines()[0]})") from exc
    return LoadedModel(model.eval(), config, path)
