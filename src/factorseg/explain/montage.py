"""Pictures of component maps: a PNG montage per block over the scan (:func:`save_montage`), cut through
the label's centre (:func:`label_centre`) or along the axial axis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from factorseg.errors import InputError
from factorseg.io import atomic_write

__all__ = ["MAP_UNIT", "label_centre", "save_montage"]


def _montage_slices(image: np.ndarray, count: int) -> list[int]:
    """``count`` slice indices along the last axis, spread evenly over the scan's nonzero extent."""
    depth = image.shape[-1]
    occupied = np.flatnonzero(np.abs(image).reshape(-1, depth).max(axis=0) > 0)
    lo, hi = (int(occupied[0]), int(occupied[-1])) if occupied.size else (0, depth - 1)
    picks = np.linspace(lo, hi, count + 2)[1:-1] if count < hi - lo + 1 else np.arange(lo, hi + 1)
    return sorted({int(round(p)) for p in picks})


def _view_axes(affine: np.ndarray | None) -> dict[str, int]:
    """Array axis of the axial, coronal and sagittal cuts (the axis a cut holds fixed), from the affine's
    orientation; without an affine the array is taken as (left-right, posterior-anterior, inferior-superior)."""
    if affine is None:
        return {"axial": 2, "coronal": 1, "sagittal": 0}
    codes = nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64))
    where = {code: axis for axis, code in enumerate(codes) if code is not None}
    axes = {"axial": where.get("S", where.get("I")), "coronal": where.get("A", where.get("P")),
            "sagittal": where.get("R", where.get("L"))}
    if sorted(a for a in axes.values() if a is not None) != [0, 1, 2]:
        return {"axial": 2, "coronal": 1, "sagittal": 0}
    return axes  # type: ignore[return-value]


def label_centre(label: np.ndarray) -> tuple[int, ...] | None:
    """The voxel nearest the centre of mass of ``label``'s nonzero voxels (None for an empty label), moved
    where needed so that each axis' slice through it holds label voxels (a ring's centre of mass is outside)."""
    region = np.asarray(label) != 0
    if not region.any():
        return None
    points = np.argwhere(region)
    centre = []
    for axis, value in enumerate(points.mean(axis=0)):
        present = np.unique(points[:, axis])  # slices along this axis that hold label voxels
        centre.append(int(present[np.argmin(np.abs(present - value))]))
    return tuple(centre)


def _cuts(image: np.ndarray, slices: int, centre: Sequence[int] | None,
          affine: np.ndarray | None) -> list[tuple[str, tuple[Any, ...]]]:
    """(panel title, index) per montage column: through ``centre`` (axial, coronal, sagittal, at most ``slices``
    of them) if given, else ``slices`` axial slices spread over the scan's nonzero extent."""
    if image.ndim == 2:
        return [("", (slice(None), slice(None)))]
    axes = _view_axes(affine)
    if centre is not None:
        out = []
        for view in ("axial", "coronal", "sagittal")[: max(1, slices)]:
            axis = axes[view]
            index = [slice(None)] * 3
            index[axis] = int(centre[axis])
            out.append((f"{view} {'xyz'[axis]}={centre[axis]} (label centre)", tuple(index)))
        return out
    axis = axes["axial"]
    moved = np.moveaxis(image, axis, -1)
    out = []
    for cut in _montage_slices(moved, slices):
        index = [slice(None)] * 3
        index[axis] = cut
        out.append((f"axial {'xyz'[axis]}={cut}", tuple(index)))
    return out


#: The unit of a component map (see :mod:`factorseg.explain.components`), as the montage's colour bars name it.
MAP_UNIT = "map value (a.u.: norm of the component's reconstruction)"


def save_montage(
    image: np.ndarray,
    maps: np.ndarray,
    out_png: str | Path,
    slices: int = 3,
    titles: Sequence[str] | None = None,
    overwrite: bool = False,
    outline: np.ndarray | None = None,
    notes: Sequence[str] | None = None,
    centre: Sequence[int] | None = None,
    affine: np.ndarray | None = None,
    heading: str | None = None,
) -> Path:
    """PNG montage: one row per component map over the scan in grey, a few slices per row, in the given order.

    ``image (*spatial)`` and ``maps (K, *spatial)`` share the scan grid (2D or 3D). 3D volumes are cut through
    ``centre`` (a voxel index, e.g. :func:`label_centre`: axial, coronal and sagittal slices, the first
    ``slices`` of them) or else along the axial axis at ``slices`` positions spread over the scan's nonzero
    extent; ``affine`` (the scan's) tells which array axis is axial, coronal or sagittal. Each component has
    its own colour scale (from 0 to its maximum) with a colour bar labelled with the maps' unit
    (:data:`MAP_UNIT`); values below 5 % of it are left transparent. ``notes`` adds a line per row (e.g. the
    component's AUC), ``heading`` a title over the figure. ``outline`` (a reference mask on the same grid) is
    drawn as a cyan contour of its nonzero voxels.
    """
    from matplotlib.figure import Figure

    image = np.asarray(image, dtype=np.float32)
    maps = np.asarray(maps, dtype=np.float32)
    if image.ndim not in (2, 3) or maps.shape[1:] != image.shape:
        raise InputError(f"montage needs maps (K, *S) over a 2D/3D scan (*S): got {maps.shape} and {image.shape}")
    if slices < 1 or maps.shape[0] < 1:
        raise InputError("montage needs at least one slice and one component map")
    titles = list(titles) if titles is not None else [f"component {k}" for k in range(maps.shape[0])]
    if len(titles) != maps.shape[0]:
        raise InputError(f"{len(titles)} titles given for {maps.shape[0]} component maps")
    notes = list(notes) if notes is not None else [""] * maps.shape[0]
    if len(notes) != maps.shape[0]:
        raise InputError(f"{len(notes)} notes given for {maps.shape[0]} component maps")
    if outline is not None and np.shape(outline) != image.shape:
        raise InputError(f"outline of shape {np.shape(outline)} does not match the scan's shape {image.shape}")
    if centre is not None and (len(centre) != image.ndim
                               or not all(0 <= int(c) < n for c, n in zip(centre, image.shape))):
        raise InputError(f"montage centre {tuple(centre)} is not a voxel of the scan {image.shape}")
    cuts = _cuts(image, slices, centre, affine)
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    rows, cols = maps.shape[0], len(cuts)
    fig = Figure(figsize=(2.6 * cols + 1.6, 2.7 * rows + (0.5 if heading else 0.0)), layout="constrained")
    if heading:
        fig.suptitle(heading, fontsize=8)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k in range(rows):
        vmax = float(maps[k].max()) or 1.0
        shown = None
        for j, (where, index) in enumerate(cuts):
            ax = axes[k, j]
            scan, overlay = image[index], maps[k][index]
            ax.imshow(scan.T, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower")
            masked = np.ma.masked_less(overlay.T, 0.05 * vmax)
            shown = ax.imshow(masked, cmap="inferno", vmin=0.0, vmax=vmax, alpha=0.7, origin="lower")
            if outline is not None:
                region = np.asarray(outline)[index] != 0
                if region.any() and not region.all():
                    ax.contour(region.T.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            head = "\n".join(t for t in (titles[k], notes[k]) if t)
            ax.set_title(f"{head}\n{where}" if j == 0 and head else where, fontsize=7)
        bar = fig.colorbar(shown, ax=list(axes[k]), shrink=0.8)
        bar.set_label(MAP_UNIT, fontsize=6)
        bar.ax.tick_params(labelsize=6)
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=100), overwrite=overwrite)
