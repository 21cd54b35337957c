"""The command-level entry points of explain: :func:`run_explain` for one preprocessed case and
:func:`explain_case` for a loaded model and a case's files (``factorseg explain``, the demo), with their output
files (maps on the scan grid, montages, the overlap table and the ``components.json`` index)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorseg.errors import InputError
from factorseg.data.labels import round_labels
from factorseg.explain.components import ComponentMaps, explain, upsample_maps
from factorseg.explain.maps import MAP_DTYPES, write_component_nifti, write_maps_nifti
from factorseg.explain.montage import label_centre, save_montage
from factorseg.explain.overlap import LabelValues, component_label_overlap
from factorseg.io import atomic_write, json_ready, write_json

if TYPE_CHECKING:
    from factorseg.inference.loading import LoadedModel

__all__ = ["explain_case", "run_explain"]


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
                write_component_nifti(on_scan[k], affine, out_dir / entry["nifti"], overwrite, maps_dtype)
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
