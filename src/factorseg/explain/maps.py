"""Storing component maps as NIfTI over the scan: 16-bit integers with a scale factor by default (within
5e-4 of each component's maximum, a third to a half of the float32 size), 8-bit, or exact float32."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from factorseg.errors import InputError
from factorseg.io import atomic_write, is_nifti_name, save_nifti

__all__ = ["MAP_DTYPES", "MAP_LEVELS", "quantise_maps", "write_component_nifti", "write_maps_nifti"]


def _as_volume_stack(maps: np.ndarray) -> np.ndarray:
    """``(K, *spatial)`` -> ``(X, Y, Z, K)`` float32 for a 4D NIfTI (2D maps get a singleton Z)."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 3:
        maps = maps[:, :, :, None]
    if maps.ndim != 4:
        raise InputError(f"component maps must be shaped (K, X, Y[, Z]), got {maps.shape}")
    return np.moveaxis(maps, 0, -1)


#: How component maps are stored (see :func:`write_maps_nifti`).
MAP_DTYPES = ("uint16", "uint8", "float32")
#: uint16 maps: quantisation steps per component maximum (at least), so every value is within
#: ``0.5 / MAP_LEVELS`` of its component's maximum.
MAP_LEVELS = 1000


def quantise_maps(maps: np.ndarray, dtype: str = "uint16") -> tuple[np.ndarray, float]:
    """Nonnegative maps ``(..., K)`` (components last) as integers ``q`` with a step: ``maps ~ q * step``.

    * ``uint16``: the step is the weakest component's maximum / :data:`MAP_LEVELS` (but at least the strongest's
      / 65535), so each value is within ``5e-4`` of its own component's maximum (components weaker than 1/65 of
      the strongest: within ``7.7e-6`` of the strongest's maximum);
    * ``uint8``: the strongest maximum / 255: within ``2e-3`` of it (for viewing; a third to a half of the uint16
      size).

    All-zero maps get step 1. Negative values (not produced by NMF) are clipped to 0.
    """
    if dtype not in ("uint16", "uint8"):
        raise InputError(f"quantised maps are uint16 or uint8, not {dtype!r}")
    maps = np.asarray(maps, dtype=np.float32)
    peaks = maps.reshape(-1, maps.shape[-1]).max(axis=0) if maps.size else np.zeros(1, np.float32)
    top = float(peaks.max()) if peaks.size else 0.0
    if not top > 0:
        return np.zeros(maps.shape, dtype=dtype), 1.0
    if dtype == "uint8":
        step = top / 255.0
    else:
        weakest = float(peaks[peaks > 0].min())
        step = max(weakest / MAP_LEVELS, top / 65535.0)
    limit = np.iinfo(dtype).max
    quantised = np.clip(np.rint(maps / np.float32(step)), 0, limit).astype(dtype)
    return quantised, float(step)


def write_maps_nifti(maps: np.ndarray, affine: np.ndarray, out_path: str | Path, overwrite: bool = False,
                     dtype: str = "uint16") -> Path:
    """Write component maps ``(K, *spatial)`` on the scan grid as one 4D NIfTI (components last), atomically.

    ``affine`` is the scan's voxel-to-world matrix, so 3D Slicer / ITK-SNAP show the maps over the scan.
    ``dtype``: ``uint16`` (default) or ``uint8`` store integers with the NIfTI scale factor ``scl_slope``
    (:func:`quantise_maps`), which every reader applies (``nibabel``'s ``get_fdata``, the viewers): the
    values read back are the maps within 5e-4 of each component's maximum (uint16) or 2e-3 of the largest map
    value (uint8), at a third to a half (uint16) or about a tenth (uint8) of the float32 size. ``float32`` stores
    them exactly. Non-finite maps are always stored as float32.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise InputError(f"affine must be a 4x4 matrix, got shape {affine.shape}")
    if dtype not in MAP_DTYPES:
        raise InputError(f"maps dtype must be one of {', '.join(MAP_DTYPES)}, got {dtype!r}")
    return _save_maps(_as_volume_stack(maps), affine, out_path, overwrite, dtype)


def write_component_nifti(volume: np.ndarray, affine: np.ndarray, out_path: str | Path, overwrite: bool = False,
                          dtype: str = "uint16") -> Path:
    """Write one component map ``(X, Y[, Z])`` as a 3D NIfTI (2D gets a singleton Z), stored as
    :func:`write_maps_nifti` describes."""
    return _save_maps(_as_volume_stack(np.asarray(volume)[None])[..., 0], affine, out_path, overwrite, dtype,
                      single=True)


def _save_maps(stack: np.ndarray, affine: np.ndarray, out_path: str | Path, overwrite: bool, dtype: str,
               single: bool = False) -> Path:
    """Save ``(X, Y, Z, K)`` maps (``single``: one map ``(X, Y, Z)``) as :func:`write_maps_nifti` describes."""
    if dtype == "float32" or not bool(np.isfinite(stack).all()):
        return save_nifti(stack, affine, out_path, overwrite=overwrite, dtype=np.float32)
    quantised, step = quantise_maps(stack[..., None] if single else stack, dtype)
    if single:
        quantised = quantised[..., 0]
    path = Path(out_path)
    if not is_nifti_name(path.name):
        raise InputError(f"{path}: output name must end in .nii or .nii.gz")
    img = nib.Nifti1Image(quantised, affine)
    img.set_data_dtype(quantised.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_slope_inter(step, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0.0, float(quantised.max()) * step  # display window
    atomic_write(path, img.to_filename, overwrite=overwrite)
    return path
