"""File I/O in one place: what factorseg reads from or writes to disk goes through this package.

* :mod:`factorseg.io.nifti`: NIfTI names (:data:`NIFTI_SUFFIXES`, :func:`is_nifti_name`, :func:`strip_nifti`,
  nnU-Net's ``_XXXX`` channel suffix with :func:`split_channel_suffix`), validated reading
  (:func:`read_image`, :func:`read_header`, the :func:`max_voxels` cap that ``FACTORSEG_MAX_VOXELS`` sets),
  grid checks between channels (:func:`check_same_grid`) and :func:`save_nifti`.
* :mod:`factorseg.io.files`: the regular-file check that keeps FIFOs and devices from being opened
  (:func:`check_regular_file`), atomic outputs (:func:`atomic_path`, :func:`atomic_write`) and the one JSON
  writer (:func:`write_json`: strict JSON, NaN and infinities as null).
* :mod:`factorseg.io.checkpoints`: plain-data checkpoints (:func:`save_checkpoint`, and :func:`load_checkpoint`
  with ``torch.load(weights_only=True)``).

Problems with a file raise :class:`factorseg.errors.InputError`. Names are imported from their module on first
use, so that ``from factorseg.io import write_json`` loads neither nibabel nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from factorseg._lazy import lazy_exports

if TYPE_CHECKING:
    from factorseg.io.checkpoints import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
    from factorseg.io.files import atomic_path, atomic_write, check_regular_file, json_ready, write_json
    from factorseg.io.nifti import (
        DEFAULT_MAX_VOXELS,
        MAX_VOXELS_ENV,
        NIFTI_SUFFIXES,
        Volume,
        check_same_grid,
        is_nifti_name,
        max_voxels,
        read_header,
        read_image,
        save_nifti,
        split_channel_suffix,
        strip_nifti,
    )

_MODULES = {
    "checkpoints": ("CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"),
    "files": ("atomic_path", "atomic_write", "check_regular_file", "json_ready", "write_json"),
    "nifti": ("DEFAULT_MAX_VOXELS", "MAX_VOXELS_ENV", "NIFTI_SUFFIXES", "Volume", "check_same_grid", "is_nifti_name",
              "max_voxels", "read_header", "read_image", "save_nifti", "split_channel_suffix", "strip_nifti"),
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
