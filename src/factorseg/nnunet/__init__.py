"""nnU-Net v2 integration: ``nnUNetTrainerFactorizer`` and variants (``pip install factorseg[nnunet]``).

nnU-Net finds a trainer named with ``-tr`` by searching its own ``nnunetv2/training/nnUNetTrainer``
folder, then the folders listed in the ``nnUNet_extTrainer`` environment variable. Either:

* :func:`install` (``python -m factorseg.nnunet install``) writes a one-import module into nnU-Net's
  trainer folder, which works with every nnU-Net command; :func:`uninstall` removes it; or
* ``export nnUNet_extTrainer=$(python -m factorseg.nnunet path)`` (:func:`ext_trainer_dir`), which
  changes nothing on disk. nnU-Net searches its own folder first and imports all of its trainers on
  the way, its Primus trainers among them, which need a working ``timm``/``torchvision``.

The trainers themselves are in :mod:`factorseg.nnunet.trainers` (imports nnunetv2); the plans-to-network
mapping in :mod:`factorseg.nnunet.plans` (does not). See docs/nnunet.md.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from factorseg.errors import InputError

TRAINERS = (
    "nnUNetTrainerFactorizer",
    "nnUNetTrainerFactorizer_AdamW",
    "nnUNetTrainerFactorizer_100epochs",
    "nnUNetTrainerFactorizer_10epochs",
    "nnUNetTrainerFactorizer_5epochs",
    "nnUNetTrainerFactorizer_AdamW_100epochs",
    "nnUNetTrainerFactorizer_AdamW_10epochs",
    "nnUNetTrainerFactorizer_iters3",
    "nnUNetTrainerFactorizer_rank2",
    "nnUNetTrainerFactorizer_debug",
)
#: The module :func:`install` writes into nnU-Net's trainer folder.
SHIM_NAME = "factorseg_trainers.py"
_MARKER = "# Written by factorseg.nnunet.install()"
SHIM = f'''{_MARKER}; remove with `python -m factorseg.nnunet uninstall`.
"""factorseg's nnU-Net trainers (nnUNetTrainerFactorizer and variants) for nnU-Net's trainer search."""

try:
    from factorseg.nnunet.trainers import *  # noqa: F401,F403
except ModuleNotFoundError as error:  # factorseg was uninstalled: offer no trainer, break nothing
    if not (error.name or "").startswith("factorseg"):
        raise
'''


def nnunet_trainer_dir() -> Path:
    """nnU-Net's own trainer folder (``nnunetv2/training/nnUNetTrainer``), found without importing nnunetv2."""
    spec = importlib.util.find_spec("nnunetv2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("nnunetv2 is not installed; install it with: pip install 'factorseg[nnunet]'")
    return Path(next(iter(spec.submodule_search_locations))) / "training" / "nnUNetTrainer"


def ext_trainer_dir() -> Path:
    """The folder to put in ``nnUNet_extTrainer`` so that nnU-Net finds factorseg's trainers there."""
    return Path(__file__).resolve().parent / "ext"


def shim_path() -> Path:
    """Where :func:`install` writes its module."""
    return nnunet_trainer_dir() / SHIM_NAME


def install() -> Path:
    """Make ``-tr nnUNetTrainerFactorizer`` (and variants) work in every nnU-Net command; returns the file written.

    Writes ``factorseg_trainers.py`` (one import of :mod:`factorseg.nnunet.trainers`) into nnU-Net's
    trainer folder. Idempotent; refuses to replace a file of that name it did not write.
    """
    path = shim_path()
    if path.exists():
        current = path.read_text(encoding="utf-8", errors="replace")
        if current == SHIM:
            return path
        if not current.startswith(_MARKER):
            raise InputError(f"{path} exists and was not written by factorseg; remove it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".factorseg_", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(SHIM)
        os.replace(tmp, path)
    except OSError as error:
        raise InputError(
            f"cannot write {path} ({error.strerror or error}); set nnUNet_extTrainer={ext_trainer_dir()} instead"
        ) from None
    return path


def uninstall() -> bool:
    """Remove the module :func:`install` wrote; ``True`` if there was one."""
    path = shim_path()
    if not path.exists():
        return False
    if not path.read_text(encoding="utf-8", errors="replace").startswith(_MARKER):
        raise InputError(f"{path} was not written by factorseg; leaving it")
    path.unlink()
    return True


def installed() -> bool:
    """Whether nnU-Net's trainer folder holds the module :func:`install` writes."""
    try:
        path = shim_path()
    except InputError:
        return False
    return path.is_file() and path.read_text(encoding="utf-8", errors="replace").startswith(_MARKER)


__all__ = [
    "SHIM_NAME", "TRAINERS", "ext_trainer_dir", "install", "installed", "nnunet_trainer_dir", "shim_path", "uninstall",
]
