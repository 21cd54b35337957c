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
    """A model ready for inference and the settings it was trained with.

    ``model`` is None for an exported graph, which runs through its own runner instead.
    """

    model: nn.Module | None
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
    """The part of a resolved training config that a bundle keeps, the architecture spelt out."""
    kept = {key: config[key] for key in BUNDLE_KEYS}
    kept["model"] = models.explicit_architecture(kept["model"])
    return kept


def save_bundle(config: dict[str, Any], model: nn.Module, path: Path, overwrite: bool = True) -> Path:
    """Write a bundle (atomic) from a resolved config and a model."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_checkpoint({"config": bundle_config(config), "state_dict": state}, path, overwrite=overwrite)


def _from_lightning(path: Path) -> dict[str, Any]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from exc
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable or unsafe file
        raise InputError(
            f"{path}: is not a factorseg checkpoint or contains untrusted objects (refused to unpickle)"
        ) from exc
    hparams = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    config = hparams.get("config") if isinstance(hparams, dict) else None
    if not isinstance(config, dict) or not isinstance(raw.get("state_dict"), dict):
        raise InputError(f"{path}: Lightning checkpoint without a factorseg config and weights")
    missing = [key for key in BUNDLE_KEYS if key not in config]
    if missing:
        raise InputError(
            f"{path}: checkpoint from an incompatible factorseg version (config lacks {', '.join(missing)})"
        )
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in raw["state_dict"].items() if isinstance(k, str) and k.startswith(prefix)}
    return {"config": bundle_config(config), "state_dict": state}


def _check_config(config: dict[str, Any], path: Path) -> None:
    """Refuse bundle configs that cannot describe a usable model (wrong types, channel count mismatch)."""
    model, channels = config["model"], config["channels"]
    if not isinstance(model, dict):
        raise InputError(f"{path}: invalid model config {model!r}")
    if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
        raise InputError(f"{path}: invalid channel names {channels!r}")
    for key, parse in (("labels", LabelSpec.from_dict), ("transforms", TransformConfig.from_dict)):
        if not isinstance(config[key], dict):
            raise InputError(f"{path}: invalid {key} config {config[key]!r}")
        parse(config[key])
    if model.get("in_channels") is not None and model["in_channels"] != len(channels):
        raise InputError(
            f"{path}: model takes {model['in_channels']} input channels but lists {len(channels)} channel names"
        )


def load_bundle(path: str | Path) -> LoadedModel:
    """Load a bundle (``.pt``) or a Lightning checkpoint (``.ckpt``) for inference, in eval mode.

    Both are read with ``torch.load(weights_only=True)``: tensors and plain data only, never code.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a model file (.pt or .ckpt)")
    raw = _from_lightning(path) if path.suffix == ".ckpt" else load_checkpoint(path)
    config, state = raw.get("config"), raw.get("state_dict")
    if not isinstance(config, dict) or any(k not in config for k in BUNDLE_KEYS):
        raise InputError(f"{path}: not a factorseg model bundle (missing config entries)")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a factorseg model bundle (no weights)")
    _check_config(config, path)
    config = {**config, "model": models.upgrade_legacy(config["model"])}
    model = build_model(config["model"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit the model it describes ({str(exc).splitlines()[0]})") from exc
    return LoadedModel(model.eval(), config, path)
