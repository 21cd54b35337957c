"""Interpretability of Factorizer models: extract, map and score the NMF components.

Every Factorizer block factorises each window matrix ``X (head_dim x window voxels)`` of each head as
``X ~ U V^T`` (``U``: channel loadings, ``V``: spatial factor, rank ``R``). This module captures those
factors during an ordinary forward pass (the model's output is left bitwise unchanged) and turns them
into component maps:

* the spatial factor of every head, window and shift is reassembled into a volume at the block's
  resolution with the same inverse as the forward pass (shifted partitions are averaged);
* scale: ``U V^T`` is unchanged by ``u_r * a, v_r / a``, so a raw ``V`` is not comparable between windows.
  Maps use ``V`` scaled by the column norm ``||u_r||`` (and loadings are the unit columns ``u_r / ||u_r||``):
  a map's value at a voxel is then the Euclidean norm, over the head's channels, of component ``r``'s
  part of the reconstruction there, which is the same quantity in every window;
* the relative Frobenius error ``||X - U V^T|| / ||X||`` of every window says how well rank ``R`` fits.

Maps are resampled to the input grid (:func:`upsample_maps`), written as NIfTI over the scan
(:func:`write_maps_nifti`: 16-bit integers with a scale factor by default, within 5e-4 of each component's
maximum, a third to a half of the float32 size) and as a PNG montage (:func:`save_montage`), and scored
against a reference mask (:func:`component_label_overlap`: AUC and best Dice per component and label), so
that "this component follows the tumour core" becomes a number. :func:`run_explain` does all of it for one
preprocessed case; :func:`explain_case` for a loaded model and a case's files (``factorseg explain``, the demo).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import Tensor, nn

from factorseg.models.blocks import FactorizerBlock
from factorseg.models.layers.mixer import NMFMixer
from factorseg.errors import InputError
from factorseg.data.labels import round_labels
from factorseg.io import atomic_write, is_nifti_name, json_ready, save_nifti, write_json
from factorseg.models.layers.windows import WindowMatricize
from factorseg.models import eval_mode

if TYPE_CHECKING:
    from factorseg.inference.loading import LoadedModel

__all__ = [
    "MAP_DTYPES",
    "ComponentMaps",
    "component_label_overlap",
    "explain",
    "explain_case",
    "label_centre",
    "list_blocks",
    "quantise_maps",
    "run_explain",
    "save_montage",
    "upsample_maps",
    "write_maps_nifti",
]

_INTERP_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}

#: Label regions to score: ``None`` (each nonzero value), values, or named groups such as ``{"core": [1, 3]}``.
LabelValues = Mapping[str, int | Sequence[int]] | Sequence[int] | None


@dataclass
class ComponentMaps:
    """NMF components of one block for one forward pass (CPU, float32).

    Attributes:
        maps: ``(B, heads * rank, *spatial)`` at the block's resolution; channel ``h * rank + r`` is head
            ``h``, component ``r`` (see the module docstring for the scale).
        loadings: ``(B, S, H, W, head_dim, R)`` unit-norm channel loadings per shift, head and window; they
            index the head's channels of the mixer's in-projection (after its ReLU).
        spatial_factors: ``(B, S, H, W, N, R)`` the scaled spatial factors in window form (``N`` window
            voxels), so ``loadings @ spatial_factors^T`` is the block's rank-R reconstruction ``U V^T``.
        window_error: ``(B, S, H, W)`` relative Frobenius error ``||X - U V^T|| / ||X||`` per window
            (0 for an all-zero window).
        meta: plain-data description (block name, spatial size, stride, heads, rank, window, shifts, ...).
    """

    maps: Tensor
    loadings: Tensor
    spatial_factors: Tensor
    window_error: Tensor
    meta: dict[str, Any]

    @property
    def names(self) -> list[str]:
        """One ``"block/head h/component r"`` title per map channel."""
        block, rank = self.meta["block"], self.meta["rank"]
        return [f"{block}/head {k // rank}/component {k % rank}" for k in range(self.maps.shape[1])]

    def component_table(self) -> list[dict[str, Any]]:
        """Which head and rank component each map channel is, for the JSON sidecar."""
        rank = self.meta["rank"]
        return [
            {"index": k, "block": self.meta["block"], "head": k // rank, "component": k % rank, "name": name}
            for k, name in enumerate(self.names)
        ]


def _named_mixers(model: nn.Module) -> dict[str, NMFMixer]:
    """NMF mixers of ``model`` keyed by the path of their Factorizer block (or their own path)."""
    modules = dict(model.named_modules())
    found: dict[str, NMFMixer] = {}
    for name, module in modules.items():
        if not isinstance(module, NMFMixer):
            continue
        parent, _, leaf = name.rpartition(".")
        key = parent if leaf == "mixer" and isinstance(modules.get(parent), FactorizerBlock) else name
        found[key or name or "mixer"] = module
    return found


def list_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks whose NMF components can be explained, in forward (module) order.

    A Factorizer block is named by its module path (``encoder.2.0``, ``decoder.1.0``); an NMF mixer
    outside a Factorizer block by its own path.
    """
    return list(_named_mixers(model))


def _resolve_blocks(model: nn.Module, blocks: Sequence[str] | None) -> dict[str, NMFMixer]:
    mixers = _named_mixers(model)
    if not mixers:
        raise InputError(f"{type(model).__name__} has no NMF blocks to explain (is it a Factorizer?)")
    if blocks is None:
        return mixers
    if isinstance(blocks, str):
        blocks = [blocks]
    unknown = [b for b in blocks if b not in mixers]
    if unknown:
        raise InputError(
            f"unknown block(s) {', '.join(map(repr, unknown))}; this model's blocks are: {', '.join(mixers)}"
        )
    return {b: mixers[b] for b in dict.fromkeys(blocks)}


class _Recorder:
    """Captures one mixer's input during a forward pass and builds its maps from it afterwards."""

    def __init__(self, name: str, mixer: NMFMixer) -> None:
        self.name, self.mixer = name, mixer
        self.input: Tensor | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.rng: tuple[Tensor, Tensor | None] = (torch.empty(0), None)
        self.calls = 0
        self.result: ComponentMaps | None = None

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.input = (args[0] if args else next(iter(kwargs.values()))).detach()
        self.input_shape = tuple(self.input.shape)
        self.calls += 1
        # The generator states at the block's entry: a random NMF start is drawn again identically.
        cuda = self.input.device.type == "cuda"
        self.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(self.input.device) if cuda else None)

    @torch.no_grad()
    def factorise(self) -> None:
        """Factorise the window matrices of the captured input with the block's own NMF.

        The mixer's sub-block path never forms the window matrices (nor ``V``), so they are built here
        from the same input and weights, with the random generators set back to their state at the
        block's entry (the same random start for ``init="random"``): the factors are the forward
        pass's, up to float rounding.
        """
        if self.input is None:
            raise RuntimeError(f"block {self.name} did not run in the forward pass")
        mats, lay = self.mixer.matrices(self.input)
        cpu_state, cuda_state = self.rng
        devices = [self.input.device] if cuda_state is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, self.input.device)
            u, v = self.mixer.nmf.decompose(mats, nonnegative=True, column_shape=lay.window)
        self.input = None
        self.record(mats, u, v)

    @torch.no_grad()
    def record(self, mats: Tensor, u: Tensor, v: Tensor) -> None:
        if self.input_shape is None:
            raise RuntimeError(f"the NMF of block {self.name} ran outside its mixer's forward pass")
        batch, channels, *spatial = self.input_shape
        layout = self.mixer.matricize.layout(spatial)
        rows, cols, rank = mats.shape[-2], mats.shape[-1], u.shape[-1]
        shape = (batch, len(layout.shifts), channels // rows, layout.num_windows)
        if mats.numel() != math.prod(shape) * rows * cols:
            raise RuntimeError(
                f"block {self.name}: NMF matrices {tuple(mats.shape)} do not match the window layout {layout}"
            )
        x = mats.detach().float().reshape(*shape, rows, cols)
        u = u.detach().float().reshape(*shape, rows, rank)
        v = v.detach().float().reshape(*shape, cols, rank)
        tiny = torch.finfo(torch.float32).tiny
        norms = u.norm(dim=-2, keepdim=True)  # (..., 1, R)
        loadings = u / norms.clamp_min(tiny)
        spatial_factors = v * norms
        residual = (x - u @ v.transpose(-1, -2)).flatten(-2).norm(dim=-1)
        window_error = residual / x.flatten(-2).norm(dim=-1).clamp_min(tiny)
        # Reassemble V^T (R x N) where X (head_dim x N) was: the forward pass's inverse with head_dim = R.
        placer = WindowMatricize(len(spatial), rank, layout.window, layout.shifts)
        maps = placer.inverse(spatial_factors.transpose(-1, -2), layout)
        meta = {
            "block": self.name,
            "spatial": list(spatial),
            "heads": shape[2],
            "head_dim": rows,
            "rank": rank,
            "window": list(layout.window),
            "grid": list(layout.grid),
            "shifts": [list(s) for s in layout.shifts],
            "mean_window_error": float(window_error.mean()),
        }
        self.result = ComponentMaps(
            maps.cpu(), loadings.cpu(), spatial_factors.cpu(), window_error.cpu(), meta
        )


@contextmanager
def _recording(mixers: Mapping[str, NMFMixer]) -> Iterator[list[_Recorder]]:
    """Hook the chosen mixers: a pre-hook keeps each one's input (the forward pass itself is untouched)."""
    recorders = [_Recorder(name, mixer) for name, mixer in mixers.items()]
    with ExitStack() as stack:
        for rec in recorders:
            stack.enter_context(rec.mixer.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
        yield recorders


def _stride(input_spatial: Sequence[int], block_spatial: Sequence[int]) -> list[int | float]:
    out: list[int | float] = []
    for i, b in zip(input_spatial, block_spatial):
        out.append(i // b if i % b == 0 else i / b)
    return out


def explain(
    model: nn.Module, image: Tensor, blocks: Sequence[str] | None = None
) -> tuple[Any, dict[str, ComponentMaps]]:
    """Run ``model`` on ``image (B, C, *spatial)`` in eval mode and collect the NMF components.

    Returns the model's output (bitwise what ``model.eval()(image)`` under ``no_grad`` gives) and, for each
    chosen block (default: all, see :func:`list_blocks`), its :class:`ComponentMaps`. The model's
    training flag is restored afterwards. Each block must run exactly once per forward pass.
    """
    if not isinstance(image, Tensor) or image.dim() < 3:
        raise InputError(f"explain needs an image tensor shaped (B, C, *spatial), got {getattr(image, 'shape', image)}")
    mixers = _resolve_blocks(model, blocks)
    with eval_mode(model), torch.no_grad(), _recording(mixers) as recorders:
        output = model(image)
    results: dict[str, ComponentMaps] = {}
    for rec in recorders:
        if rec.calls != 1:
            raise RuntimeError(
                f"block {rec.name} ran {rec.calls} times in one forward pass; explain needs exactly one"
            )
        rec.factorise()
        assert rec.result is not None
        rec.result.meta["input_spatial"] = list(image.shape[2:])
        rec.result.meta["stride"] = _stride(image.shape[2:], rec.result.meta["spatial"])
        results[rec.name] = rec.result
    return output, results


def upsample_maps(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Resample ``maps (B, K, *spatial)`` to ``size`` by (bi/tri)linear interpolation.

    With ``align_corners=False`` a block voxel at stride ``s`` covers exactly the ``s`` input voxels it was
    computed from; nonnegative maps stay nonnegative.
    """
    size = tuple(int(s) for s in size)
    if maps.dim() != len(size) + 2:
        raise InputError(f"maps of shape {tuple(maps.shape)} cannot be resampled to size {size}")
    if tuple(maps.shape[2:]) == size:
        return maps
    return F.interpolate(maps.float(), size=size, mode=_INTERP_MODES[len(size)], align_corners=False)


def _regions(label: np.ndarray, label_values: LabelValues) -> dict[str, list[int]]:
    """Named label regions: each nonzero value (default), each listed value, or the given named groups."""
    if label_values is None:
        return {str(int(v)): [int(v)] for v in np.unique(label) if v != 0}
    if isinstance(label_values, Mapping):
        return {str(k): [int(v)] if np.isscalar(v) else [int(x) for x in v] for k, v in label_values.items()}
    return {str(int(v)): [int(v)] for v in label_values}


def _best_dice(sorted_scores: np.ndarray, sorted_pos: np.ndarray, positives: int) -> tuple[float, float]:
    """Best Dice of ``score >= t`` over all thresholds ``t``, and that threshold (scores sorted descending)."""
    # Only the last voxel of each run of tied scores is a possible cut.
    ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    tp = np.cumsum(sorted_pos)[ends]
    dice = 2.0 * tp / (ends + 1 + positives)
    best = int(np.argmax(dice))
    return float(dice[best]), float(sorted_scores[ends[best]])


def component_label_overlap(
    maps: np.ndarray | Tensor,
    label: np.ndarray,
    label_values: LabelValues = None,
    mask: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Score how well each component map ``(K, *spatial)`` follows each label region of ``label (*spatial)``.

    ``label_values``: ``None`` (every nonzero value on its own), a list of values, or named regions such as
    ``{"tumour core": [1, 3]}``. ``mask`` restricts the voxels scored (e.g. the brain, so that the
    background does not dominate). Per component and region the result holds:

    * ``auc``: area under the ROC curve of the map as a score for the region, computed as the
      Mann-Whitney U statistic with tied scores counted one half (1 = the map is higher in the region
      than everywhere else, 0.5 = no better than chance, 0 = the map avoids the region);
    * ``best_dice``: the highest Dice of ``map >= t`` over all thresholds ``t`` (an optimistic summary:
      the threshold is chosen with the reference), and that ``threshold``.

    Both are ``nan`` for a region without voxels (or covering every voxel, for the AUC).
    """
    maps = maps.detach().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps)
    label = round_labels(label)
    if maps.shape[1:] != label.shape:
        raise InputError(f"label of shape {label.shape} does not match component maps of shape {maps.shape[1:]}")
    if mask is None:
        keep = np.ones(label.shape, dtype=bool)
    else:
        keep = np.asarray(mask).astype(bool)
        if keep.shape != label.shape:
            raise InputError(f"mask of shape {keep.shape} does not match the label's shape {label.shape}")
    names = list(names) if names is not None else [str(k) for k in range(maps.shape[0])]
    if len(names) != maps.shape[0]:
        raise InputError(f"{len(names)} names given for {maps.shape[0]} component maps")
    regions = _regions(label, label_values)
    kept_label = label[keep]
    positives = {region: np.isin(kept_label, values) for region, values in regions.items()}
    rows: list[dict[str, Any]] = []
    for k in range(maps.shape[0]):
        scores = maps[k][keep].astype(np.float64)
        ranks = rankdata(scores)
        order = np.argsort(-scores, kind="stable")
        sorted_scores = scores[order]
        for region, pos in positives.items():
            n_pos = int(pos.sum())
            n_neg = pos.size - n_pos
            auc = best = threshold = math.nan
            if n_pos and n_neg:
                auc = float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
            if n_pos:
                best, threshold = _best_dice(sorted_scores, pos[order], n_pos)
            rows.append(
                {
                    "component": k, "name": names[k], "label": region, "values": regions[region],
                    "voxels": n_pos, "auc": auc, "best_dice": best, "threshold": threshold,
                }
            )
    return rows


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


#: The unit of a component map (see the module docstring), as the montage's colour bars name it.
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


def _write_overlap_csv(path: Path, rows: Sequence[Mapping[str, Any]], overwrite: bool) -> None:
    fields = ["block", "component", "name", "label", "values", "voxels", "auc", "best_dice", "threshold"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "values": " ".join(map(str, row["values"]))})
    atomic_write(path, buffer.getvalue().encode(), overwrite=overwrite)


def _file_stem(block: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in block)


def run_explain(
    model: nn.Module,
    image: Tensor,
    scan: np.ndarray,
    affine: np.ndarray,
    out_dir: str | Path,
    blocks: Sequence[str] | None = None,
    label: np.ndarray | None = None,
    label_values: LabelValues = None,
    mask: np.ndarray | None = None,
    to_scan_grid: Callable[[np.ndarray], np.ndarray] | None = None,
    per_component: bool = False,
    montage_components: int = 12,
    slices: int = 3,
    overwrite: bool = False,
    maps_dtype: str = "uint16",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Explain one case: component maps on the scan grid as NIfTI, PNG montages and a JSON index.

    Args:
        model: a model with NMF blocks (any Factorizer variant).
        image: the preprocessed network input ``(C, *spatial)`` or ``(1, C, *spatial)``; it is zero-padded
            at the end to a multiple of ``model.total_stride`` (if the model has one) and the maps cropped back.
        scan: ``(*scan_spatial)`` the scan to show the maps over (e.g. one modality, on its own grid).
        affine: the scan's 4x4 voxel-to-world matrix, written into the NIfTI files.
        out_dir: output folder (created if needed).
        blocks: block names (see :func:`list_blocks`); default all.
        label, label_values, mask: optional reference mask on the scan grid; with it, per-component overlap
            scores (:func:`component_label_overlap`) go to ``overlap.csv`` and the JSON.
        to_scan_grid: maps ``(K, *spatial)`` on the network's input grid to ``(K, *scan_spatial)`` (e.g. a
            MONAI inverse of the preprocessing). Default: linear resize, valid when the input covers the
            scan's field of view in the same orientation (a resampling, no crop or reorientation).
        per_component: also write one 3D NIfTI per component.
        montage_components: the montage of a block shows at most this many components, best first: with a
            label the ones with the highest AUC for any region (sorted by it, each row noting its AUCs),
            otherwise the ones with the largest mean.
        slices: slices per component in the montages: with a (non-empty) label the axial, coronal and sagittal
            slices through its centre of mass (:func:`label_centre`; at most 3), otherwise axial slices spread
            over the scan.
        overwrite: replace existing output files instead of refusing.
        maps_dtype: how the NIfTI maps are stored (:func:`write_maps_nifti`): ``uint16`` (default: within 5e-4
            of each component's maximum), ``uint8`` or ``float32`` (exact).
        progress: called with a short description before each step (the forward pass, each block).

    Returns:
        The content of ``components.json``: per block its metadata, files, components and mean window
        error, plus the overlap table when a label is given.
    """
    if image.dim() == len(np.shape(scan)) + 2 and image.shape[0] == 1:
        image = image[0]
    scan = np.asarray(scan, dtype=np.float32)
    if image.dim() != scan.ndim + 1:
        raise InputError(
            f"network input of shape {tuple(image.shape)} does not match a {scan.ndim}D scan "
            "(expected (C, *spatial) or (1, C, *spatial))"
        )
    for what, array in (("label", label), ("mask", mask)):
        if array is not None and np.shape(array) != scan.shape:
            raise InputError(f"{what} of shape {np.shape(array)} is not on the scan grid {scan.shape}")
    if montage_components < 1 or slices < 1:
        raise InputError(f"montage_components ({montage_components}) and slices ({slices}) must be >= 1")
    if maps_dtype not in MAP_DTYPES:
        raise InputError(f"maps dtype must be one of {', '.join(MAP_DTYPES)}, got {maps_dtype!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")

    spatial = tuple(image.shape[1:])
    stride = int(getattr(model, "total_stride", 1))
    padded = tuple(-(-s // stride) * stride for s in spatial)
    pad = [p for s, q in zip(reversed(spatial), reversed(padded)) for p in (0, q - s)]
    param = next(model.parameters(), None)
    batch = image.unsqueeze(0) if param is None else image.unsqueeze(0).to(param.device, param.dtype)
    if progress is not None:
        progress("running the model")
    _, found = explain(model, F.pad(batch, pad) if any(pad) else batch, blocks)  # unknown block names raise here
    targets = _output_names(found, per_component, label is not None)
    if not overwrite:
        existing = [name for name in targets if (out_dir / name).exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise InputError(f"{out_dir / existing[0]}: already exists{more}; pass overwrite to replace")
    with _new_outputs(out_dir, targets):
        return _write_explanation(found, scan, affine, out_dir, spatial, padded, label, label_values, mask,
                                  to_scan_grid, per_component, montage_components, slices, overwrite, maps_dtype,
                                  progress)


def explain_case(
    loaded: LoadedModel,
    images: Sequence[str | Path],
    out_dir: str | Path,
    *,
    label: str | Path | None = None,
    brain_mask: bool = False,
    device: str = "cpu",
    nmf_iters: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Explain one case of a loaded model on the grid of its first image file (what ``factorseg explain`` runs).

    ``images`` (one file, 4D for several channels, or the channel files in the model's order) are preprocessed
    as the model was trained, and the maps go back through that preprocessing onto the first file's grid.
    ``label``: a reference mask file on that grid, for the overlap scores; ``brain_mask``: score only where
    the scan is non-zero (a skull-stripped brain). The model runs on ``device`` with ``nmf_iters`` NMF
    iterations (default: as trained); ``loaded`` is left as it is. ``options`` go to :func:`run_explain`
    (``blocks``, ``label_values``, ``per_component``, ``montage_components``, ``slices``, ``overwrite``,
    ``maps_dtype``, ``progress``). Returns the content of ``components.json``.
    """
    from factorseg.data.transforms import infer_transforms, invert_prediction
    from factorseg.inference.pipeline import resolve_device
    from factorseg.inference.runners import prepared_module
    from factorseg.io import read_image

    files = [str(p) for p in images]
    channels = loaded.channels
    if len(files) not in (1, len(channels)):
        raise InputError(f"give one 4D file or {len(channels)} channel files ({', '.join(channels)})")
    transforms = infer_transforms(loaded.transforms)
    data = transforms({"id": "case", "image": files})
    reference = read_image(files[0], expect_3d=len(files) > 1)
    scan = reference.array if reference.array.ndim == 3 else reference.array[..., 0]
    reference_label = round_labels(read_image(label).array, str(label)) if label is not None else None
    if reference_label is not None and reference_label.shape != scan.shape:
        raise InputError(f"{label}: shape {reference_label.shape} differs from the scan's {scan.shape}")
    network = prepared_module(loaded.model, resolve_device(device), nmf_iters)

    def to_scan_grid(maps: np.ndarray) -> np.ndarray:
        return invert_prediction(torch.as_tensor(maps), data, transforms, mode="linear").numpy()

    return run_explain(network, data["image"].as_tensor(), scan, reference.affine, out_dir,
                       label=reference_label, mask=scan > 0 if brain_mask else None, to_scan_grid=to_scan_grid, **options)


def _output_names(found: Mapping[str, ComponentMaps], per_component: bool, overlap: bool) -> list[str]:
    """Every file that :func:`run_explain` writes for these blocks (names as in :func:`_write_explanation`)."""
    names = []
    for name, comp in found.items():
        stem = _file_stem(name)
        names += [f"{stem}_components.nii.gz", f"{stem}_montage.png"]
        if per_component:
            names += [f"{stem}_head{e['head']}_comp{e['component']}.nii.gz" for e in comp.component_table()]
    return names + (["overlap.csv"] if overlap else []) + ["components.json"]


@contextmanager
def _new_outputs(out_dir: Path, names: Sequence[str]) -> Iterator[None]:
    """Create ``out_dir`` (and missing parents) for the body; if the body fails, remove the listed files
    that did not exist before and every folder created here, so that a refusal leaves nothing behind."""
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    before = {name for name in names if (out_dir / name).exists()}
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for name in names:
            if name not in before:
                (out_dir / name).unlink(missing_ok=True)
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: someone else's files, keep them
        raise


def _write_explanation(
    found: Mapping[str, ComponentMaps],
    scan: np.ndarray,
    affine: np.ndarray,
    out_dir: Path,
    spatial: tuple[int, ...],
    padded: tuple[int, ...],
    label: np.ndarray | None,
    label_values: LabelValues,
    mask: np.ndarray | None,
    to_scan_grid: Callable[[np.ndarray], np.ndarray] | None,
    per_component: bool,
    montage_components: int,
    slices: int,
    overwrite: bool,
    maps_dtype: str = "uint16",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The writing part of :func:`run_explain` (maps on the scan grid, montages, overlap table, JSON index)."""
    summary: dict[str, Any] = {"scan_shape": list(scan.shape), "affine": np.asarray(affine).tolist(),
                               "maps_dtype": maps_dtype, "blocks": {}}
    overlap_rows: list[dict[str, Any]] = []
    crop = (slice(None),) + tuple(slice(0, s) for s in spatial)
    centre = label_centre(label) if label is not None and scan.ndim == 3 else None
    for name, comp in found.items():
        if progress is not None:
            progress(f"block {name}")
        on_input = upsample_maps(comp.maps, padded)[0][crop].numpy()
        if to_scan_grid is not None:
            on_scan = np.asarray(to_scan_grid(on_input), dtype=np.float32)
        elif on_input.shape[1:] != scan.shape:
            on_scan = upsample_maps(torch.from_numpy(on_input)[None], scan.shape)[0].numpy()
        else:
            on_scan = on_input
        if on_scan.shape != (on_input.shape[0], *scan.shape):
            expected = (on_input.shape[0], *scan.shape)
            raise InputError(f"maps of block {name} mapped to shape {on_scan.shape}, expected {expected}")
        stem = _file_stem(name)
        files = {"nifti": f"{stem}_components.nii.gz", "montage": f"{stem}_montage.png"}
        write_maps_nifti(on_scan, affine, out_dir / files["nifti"], overwrite=overwrite, dtype=maps_dtype)
        components = comp.component_table()
        for k, entry in enumerate(components):
            entry["mean"], entry["max"] = float(on_scan[k].mean()), float(on_scan[k].max())
            if per_component:
                entry["nifti"] = f"{stem}_head{entry['head']}_comp{entry['component']}.nii.gz"
                volume = on_scan[k] if on_scan.ndim == 4 else on_scan[k][..., None]
                _save_maps(volume, affine, out_dir / entry["nifti"], overwrite, maps_dtype, single=True)
        notes = [""] * len(components)
        best: dict[str, dict[str, Any]] = {}
        if label is not None:
            rows = component_label_overlap(on_scan, label, label_values, mask, comp.names)
            for row in rows:
                row["block"] = name
            overlap_rows.extend(rows)
            ranking = [
                max((r["auc"] for r in rows if r["component"] == k and math.isfinite(r["auc"])), default=-1.0)
                for k in range(len(components))
            ]
            for k in range(len(components)):
                aucs = [f"{r['label']}: {r['auc']:.2f}" for r in rows
                        if r["component"] == k and math.isfinite(r["auc"])]
                notes[k] = f"AUC {', '.join(aucs)}" if aucs else "AUC n/a (label region empty)"
            for row in rows:
                if math.isfinite(row["auc"]) and row["auc"] > best.get(row["label"], {}).get("auc", -1.0):
                    best[row["label"]] = {"component": row["component"], "name": row["name"], "auc": row["auc"]}
        else:
            ranking = [entry["mean"] for entry in components]
        shown = np.argsort(-np.asarray(ranking), kind="stable")[:montage_components].tolist()  # best first
        titles = [comp.names[k].split("/", 1)[-1] for k in shown]
        order = "best AUC" if label is not None else "mean value"
        heading = f"block {name}: {len(shown)} of {len(components)} components, sorted by {order} (highest first)"
        if label is not None:
            heading += "; cyan: label outline"
        save_montage(scan, on_scan[shown], out_dir / files["montage"], slices, titles, overwrite, outline=label,
                     notes=[notes[k] for k in shown], centre=centre, affine=affine, heading=heading)
        summary["blocks"][name] = {**comp.meta, "files": files, "montage_components": shown, "components": components}
        if label is not None:
            summary["blocks"][name]["best_per_label"] = best
    if label is not None:
        summary["overlap"] = overlap_rows
        summary["files"] = {"overlap": "overlap.csv"}
        _write_overlap_csv(out_dir / "overlap.csv", overlap_rows, overwrite)
    write_json(out_dir / "components.json", summary, overwrite=overwrite)
    return json_ready(summary)
