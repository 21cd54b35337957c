"""Checkpoints: plain-data dicts of tensors, written atomically and read back without unpickling code.

A checkpoint is stamped with :data:`CHECKPOINT_FORMAT` and the factorseg version that wrote it, and holds only
tensors, numbers, strings and plain containers, so that :func:`load_checkpoint` can use
``torch.load(weights_only=True)``: a file from elsewhere cannot run code when it is opened.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from factorseg import __version__
from factorseg.errors import InputError
from factorseg.io.files import PathLike, _stat_regular, atomic_write

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

#: Version of the checkpoint layout written by :func:`save_checkpoint`; bump it on incompatible changes.
CHECKPOINT_FORMAT = 1


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError unless ``obj`` is built from types that ``torch.load(weights_only=True)`` restores."""
    if obj is None or type(obj) in (str, int, float, bool) or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"checkpoint key {key!r} in {where} must be str or int")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} has type {type(obj).__name__}; checkpoints hold only tensors, str/int/float/bool/None, "
        "lists, tuples and dicts"
    )


def save_checkpoint(obj: Mapping[str, Any], path: PathLike, overwrite: bool = False) -> Path:
    """Write a checkpoint dict atomically, stamped with ``format_version`` and ``factorseg_version``.

    Only plain data is accepted (tensors, numbers, strings, lists, tuples, dicts) so that
    :func:`load_checkpoint` can read it back without unpickling arbitrary objects.
    """
    payload = dict(obj)
    payload["format_version"] = CHECKPOINT_FORMAT
    payload["factorseg_version"] = __version__
    _check_plain(payload, "checkpoint")
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), overwrite=overwrite)


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` on the CPU, refusing to unpickle code.

    Uses ``torch.load(weights_only=True)``, which only restores tensors and plain containers; files that
    are not torch checkpoints, hold other objects, or use another checkpoint format raise :class:`InputError`.
    """
    path = Path(path)
    # FIFOs and devices would block or never end: refused from os.stat before torch opens anything
    if _stat_regular(path, "checkpoint", "a checkpoint file").st_size == 0:
        raise InputError(f"{path}: checkpoint file is empty")
    refused = f"{path}: is not a factorseg checkpoint or contains untrusted objects (refused to unpickle)"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from exc
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes make the weights-only unpickler fail in many ways
        raise InputError(refused) from exc
    if not isinstance(obj, dict) or "format_version" not in obj:
        raise InputError(f"{path}: is not a factorseg checkpoint (no format_version entry)")
    version = obj["format_version"]
    if version != CHECKPOINT_FORMAT:
        written_by = obj.get("factorseg_version", "an unknown version")
        hint = "upgrade factorseg" if isinstance(version, int) and version > CHECKPOINT_FORMAT else "re-export it"
        raise InputError(
            f"{path}: checkpoint format {version!r} (written by factorseg {written_by}) is not supported; "
            f"factorseg {__version__} reads format {CHECKPOINT_FORMAT}: {hint}"
        )
    return obj
