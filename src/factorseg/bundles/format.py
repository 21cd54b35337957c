"""Trained-model files: plain-data config + weights, read without unpickling code.

A bundle holds what prediction needs and nothing that executes: the model's registry name and
constructor arguments, the label convention, the preprocessing, the channel names, inference
defaults and the ``state_dict``. Lightning ``.ckpt`` files from ``factorseg train`` read too
(``weights_only=True``). This module owns the file format (:func:`save_bundle`, :func:`read_bundle`,
:func:`exported_kind`); :func:`factorseg.inference.loading.load_model` is where every model is loaded.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from factorseg import models
from factorseg.config import validate_bundle_config
from factorseg.errors import InputError
from factorseg.io import load_checkpoint, save_checkpoint

BUNDLE_KEYS = ("model", "labels", "transforms", "channels", "inference")


_CONSTRUCTOR_ERRORS = (TypeError, ValueError, ArithmeticError, IndexError, KeyError, RuntimeError)


def build_model(model_cfg: dict[str, Any]) -> nn.Module:
    """A registry model from ``{"name": ..., **constructor arguments}``.

    Errors of the constructor (an argument it does not take, sizes that do not fit together) become
    one-line :class:`InputError` s naming the setting where the message allows.
    """
    kwargs = dict(model_cfg)
    name = kwargs.pop("name", None)
    if not name:
        raise InputError("model config has no 'name'")
    try:
        return models.create(name, **kwargs)
    except InputError:
        raise
    except MemoryError:
        raise
    except _CONSTRUCTOR_ERRORS as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", first)
        if unexpected:
            raise InputError(f"model.{unexpected.group(1)} is not a setting of {name}") from None
        named = [key for key in kwargs if re.search(rf"\b{re.escape(key)}\b", first)]
        where = f"model.{named[0]}" if named else f"model {name!r}"
        raise InputError(f"{where}: cannot build {name} with these settings ({first})") from None


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
    if not isinstance(config["model"], dict):
        raise InputError(f"{path}: model must be a mapping of settings, got {config['model']!r}")
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in raw["state_dict"].items() if isinstance(k, str) and k.startswith(prefix)}
    return {"config": bundle_config(config), "state_dict": state}


def exported_kind(path: Path) -> str | None:
    """``"onnx"`` or ``"torchscript"`` for an exported graph (by suffix or content), else None."""
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if not path.is_file():  # a pipe or a device: never read here (it could block)
        return None
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return None
    # ONNX is a protobuf ModelProto: field 1 (ir_version, varint) first, the producer's name soon after.
    if head[:1] == b"\x08" and (b"pytorch" in head or b"onnx" in head.lower()):
        return "onnx"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            return "torchscript"
    return None


def check_weights(state: Any, path: Path | str) -> dict[str, torch.Tensor]:
    """A state dict of tensors whose floating-point values are all finite (one-line InputError otherwise)."""
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InputError(f"{path}: not a factorseg model bundle (no weights)")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(
            f"{path}: {len(bad)} of {len(state)} weight tensors hold NaN or infinite values (e.g. {bad[0]}); "
            "the training that wrote it diverged: retrain with a lower train.lr"
        )
    return state


def read_bundle(path: Path) -> tuple[dict[str, Any], nn.Module]:
    """The config and the network (eval mode, on the CPU) of a bundle (``.pt``) or a Lightning checkpoint (``.ckpt``).

    Both are read with ``torch.load(weights_only=True)``: tensors and plain data only, never code. The config
    is checked in full (:func:`factorseg.config.validate_bundle_config`) and every weight must be finite.
    ``path`` is a regular file that is no exported graph (:func:`factorseg.inference.loading.load_model` sees to it).
    """
    raw = _from_lightning(path) if path.suffix == ".ckpt" else load_checkpoint(path)
    config, state = raw.get("config"), raw.get("state_dict")
    if not isinstance(config, dict):
        raise InputError(f"{path}: not a factorseg model bundle (no config)")
    validate_bundle_config(config, str(path))
    state = check_weights(state, path)
    config = {**config, "model": models.upgrade_legacy(config["model"])}
    try:
        model = build_model(config["model"])
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not fit the model it describes ({str(exc).splitlines()[0]})") from exc
    return config, model.eval()
