"""Prediction: sliding windows with Gaussian blending, flip test-time augmentation, ensembles,
and masks written in each input scan's own geometry with the dataset's own label values."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.utils import convert_to_tensor
from rich.progress import Progress

from factorseg.config import InferenceConfig
from factorseg.inference.loading import LoadedModel
from factorseg.inference.runners import Runner
from factorseg.data.formats import case_problems
from factorseg.data.labels import LabelSpec
from factorseg.data.transforms import MIN_COVERAGE, infer_transforms, invert_prediction
from factorseg.errors import InputError, InputWarning, join_problems
from factorseg.io import save_nifti


@dataclass
class InferenceOptions:
    """How to run the networks; ``None`` fields take the model's settings (:class:`InferenceConfig`)."""

    overlap: float | None = None
    blend: str | None = None
    sw_batch_size: int | None = None
    tta: bool | None = None
    nmf_iters: int | None = None
    device: str = "cpu"
    save_probabilities: bool = False
    overwrite: bool = False

    def resolved(self, model: Mapping[str, Any]) -> InferenceConfig:
        """The model's inference settings (its config's ``inference`` section) overridden by the options that are set;
        the options are checked here, with their own names, and again with the config's types and limits."""
        out = {f.name: getattr(self, f.name) for f in fields(InferenceConfig) if getattr(self, f.name) is not None}
        if "overlap" in out and not 0 <= float(out["overlap"]) < 1:
            raise InputError(f"overlap must lie in [0, 1), got {out['overlap']}")
        if "sw_batch_size" in out and int(out["sw_batch_size"]) < 1:
            raise InputError(f"sw_batch_size must be >= 1, got {out['sw_batch_size']}")
        if "blend" in out and out["blend"] not in ("gaussian", "constant"):
            raise InputError(f"blend must be 'gaussian' or 'constant', got {out['blend']!r}")
        if "nmf_iters" in out and int(out["nmf_iters"]) < 0:
            raise InputError(f"nmf_iters must be >= 0, got {out['nmf_iters']}")
        return replace(InferenceConfig.from_dict(model), **out)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a device that exists here; InputError otherwise."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device {name!r}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise InputError(f"device {name!r}: there are only {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
    elif device.type != "cpu":
        raise InputError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device


def flip_sets(spatial_dims: int) -> list[tuple[int, ...]]:
    """All mirror combinations (nnU-Net's mirroring TTA), identity first, as tensor dims of ``(B, C, ...)``."""
    axes = range(2, 2 + spatial_dims)
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


def _image_files(case: dict[str, Any]) -> list[str | Path]:
    """A case's image path(s) as a list."""
    return [case["image"]] if isinstance(case["image"], (str, Path)) else list(case["image"])


def _metadata_only(image: MetaTensor) -> MetaTensor:
    """``image`` without its voxels (a zero-stride view of the same shape) but with its meta data and transform
    history, which is all :func:`invert_prediction` needs: frees the preprocessed image before inversion."""
    empty = torch.zeros((), dtype=image.dtype).expand(image.shape)
    return MetaTensor(empty, meta=image.meta, applied_operations=image.applied_operations)


#: Preprocessing that an ensemble shares (one pipeline feeds every network): must agree between its models.
#: The window size (``roi_size``) may differ: each network slides its own. Augmentation settings do not act here.
ENSEMBLE_TRANSFORMS = ("orientation", "spacing", "crop_foreground")


def _label_meaning(labels: LabelSpec) -> tuple[Any, ...]:
    """What a label spec means for the outputs, names aside: mode, values, regions and their fill values."""
    return (labels.mode, labels.values, labels.regions, labels.fill)


def _describe_channels(channels: Sequence[str]) -> str:
    return f"{len(channels)} ({', '.join(channels) or 'none'})"


def check_ensemble(first: LoadedModel, other: LoadedModel) -> None:
    """Refuse ``other`` beside ``first`` in an ensemble where their outputs or inputs cannot mean the same.

    They must take the same number of channels, predict the same labels (mode, values, regions) and share the
    preprocessing (:data:`ENSEMBLE_TRANSFORMS`); the refusal names what differs with both values. Channel or
    label *names* that differ alone (``T1`` in one, ``MRI`` in the other) are a warning naming both lists: the
    input goes to every model in the first model's channel order.
    """
    a, b = first.path.name, other.path.name
    if a == b:
        a, b = str(first.path), str(other.path)
    problems: list[str] = []
    if len(first.channels) != len(other.channels):
        problems.append(f"channels: {a} takes {_describe_channels(first.channels)}, "
                        f"{b} {_describe_channels(other.channels)}")
    la, lb = first.labels, other.labels
    if _label_meaning(la) != _label_meaning(lb):
        problems.append(f"labels: {a} predicts {la.describe(with_values=True)}, {b} {lb.describe(with_values=True)}")
    ta, tb = first.transforms, other.transforms
    for key in ENSEMBLE_TRANSFORMS:
        va, vb = getattr(ta, key), getattr(tb, key)
        if va != vb:
            show = (lambda v: "none" if v is None else (list(v) if isinstance(v, tuple) else v))  # noqa: E731
            problems.append(f"transforms.{key}: {a} has {show(va)}, {b} {show(vb)}")
    if problems:
        raise InputError(f"{other.path} cannot be ensembled with {first.path}: " + "; ".join(problems))
    notes: list[str] = []
    if [c.casefold() for c in first.channels] != [c.casefold() for c in other.channels]:
        notes.append(f"channels {', '.join(other.channels)} where {a} has {', '.join(first.channels)}")
    if [n.casefold() for n in la.names] != [n.casefold() for n in lb.names]:
        notes.append(f"outputs {', '.join(lb.names)} where {a} has {', '.join(la.names)} (same label values)")
    if notes:
        warnings.warn(
            f"ensemble: {b} names its {' and its '.join(notes)}; the same number of channels, so each input "
            f"channel goes to both in {a}'s order ({', '.join(first.channels)})", InputWarning, stacklevel=3,
        )


class SegmentationPredictor:
    """Ensemble of trained models sharing labels, channels and preprocessing.

    Memory: prediction stitches the sliding windows on the CPU (only windows go to ``device``), applies the
    activation and the ensemble/TTA average in place, drops the preprocessed image before mapping the
    probabilities back onto the scan's grid and turns them into labels slab by slab. Peak memory is linear
    in the number of voxels: the fixed cost (Python, torch, models; about 0.55 GB on CPU) plus at most
    ``4 * C_in + 6 * C_out + 8`` bytes per voxel of the scan (``C_in`` channels, ``C_out`` classes or regions).
    Measured by ``benchmarks/large_volume.py``: a 512 x 512 x 400 one-channel scan with three classes peaks
    at 2.5 GB (18.9 bytes per voxel above the fixed cost).
    """

    def __init__(self, models: Sequence[LoadedModel], options: InferenceOptions | None = None) -> None:
        if not models:
            raise InputError("no model given")
        first = models[0]
        for other in models[1:]:
            check_ensemble(first, other)
        self.models, self.options = list(models), options or InferenceOptions()
        self.settings = self.options.resolved(first.config.get("inference", {}))
        self.labels, self.tcfg, self.channels = first.labels, first.transforms, first.channels
        self.transforms = infer_transforms(self.tcfg)
        device = resolve_device(self.options.device)
        # Each model's runner on the device (copied where it must change: the loaded models stay as they are).
        self.networks: list[Runner] = [m.runner.prepared(device, self.settings.nmf_iters) for m in self.models]
        self.device = device
        # Each network slides its own training window (preprocessing is shared: check_ensemble).
        self.rois = [tuple(int(r) for r in m.transforms.roi_size) for m in self.models]
        self._overlap_warned = False

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """Averaged class/region probabilities ``(C, *spatial)`` for a preprocessed ``(channels, *spatial)`` image."""
        x = convert_to_tensor(image, track_meta=False)[None].to(self.device)
        flips = flip_sets(x.dim() - 2) if self.settings.tta else [()]
        total: torch.Tensor | None = None
        with torch.inference_mode():
            for net, roi in zip(self.networks, self.rois):
                for dims in flips:
                    xi = torch.flip(x, dims) if dims else x
                    logits = sliding_window_inference(
                        xi, roi, self.settings.sw_batch_size, net, overlap=self.settings.overlap,
                        mode=self.settings.blend,
                        sw_device=net.device, device=torch.device("cpu"),
                    )
                    del xi
                    probs = self.labels.activate(convert_to_tensor(logits, track_meta=False).float(), inplace=True)
                    probs = torch.flip(probs, dims) if dims else probs
                    if total is None:
                        total = probs
                    else:
                        total.add_(probs)
                    del logits, probs
            assert total is not None
            return total[0].div_(len(self.networks) * len(flips))

    def check_case(self, case: dict[str, Any]) -> None:
        """Cheap header-level checks of a case before any work: its files are regular, readable 3D NIfTI files
        (or one 4D file) with real-valued voxels that the files can hold, the model's number of channels and
        channel grids that agree (:func:`factorseg.data.formats.case_problems`). Voxel data (corruption, NaN)
        are checked when loaded, or for a whole batch by :meth:`check_cases`."""
        problems = case_problems(case, len(self.channels), self.channels, voxels=False, min_coverage=MIN_COVERAGE)
        if problems:
            raise InputError(join_problems(problems))

    def check_cases(self, cases: Sequence[dict[str, Any]], progress: Progress | None = None) -> None:
        """Check every file of every case completely (headers, channels, grids and voxel data, one file in
        memory at a time) and raise one :class:`InputError` line naming every bad input, if any."""
        problems: list[str] = []
        task = progress.add_task("Checking inputs", total=len(cases)) if progress is not None else None
        for case in cases:
            problems.extend(case_problems(case, len(self.channels), self.channels, voxels=True,
                                          min_coverage=MIN_COVERAGE))
            if progress is not None and task is not None:
                progress.advance(task)
        if problems:
            raise InputError(join_problems(problems))

    def _warn_if_overlap_is_idle(self, case: dict[str, Any], spatial: Sequence[int]) -> None:
        """One warning per predictor when an explicitly set overlap cannot act: the scan fits one window."""
        overlap = self.options.overlap
        if self._overlap_warned or overlap is None or float(overlap) == 0:
            return
        roi = tuple(min(sizes) for sizes in zip(*self.rois))  # the scan fits every network's window
        if all(int(s) <= r for s, r in zip(spatial, roi)):
            self._overlap_warned = True
            size = " x ".join(str(int(s)) for s in spatial)
            warnings.warn(
                f"--overlap {overlap:g} has no effect on case {case.get('id', '?')}: after preprocessing it is "
                f"{size} voxels, within a single {' x '.join(map(str, roi))} window (the same holds for any "
                "scan that small)", InputWarning, stacklevel=3,
            )

    def predict_case(self, case: dict[str, Any]) -> tuple[np.ndarray, torch.Tensor]:
        """Label map (dataset values) and probabilities, both on the grid of the case's first image."""
        self.check_case(case)
        data = self.transforms(dict(case))
        if data["image"].shape[0] != len(self.channels):
            raise InputError(
                f"case {case['id']}: {data['image'].shape[0]} channels but the model expects {len(self.channels)} "
                f"({', '.join(self.channels)})"
            )
        self._warn_if_overlap_is_idle(case, tuple(data["image"].shape[1:]))
        probs = self.probabilities(data["image"])
        data["image"] = _metadata_only(data["image"])
        probs = convert_to_tensor(invert_prediction(probs, data, self.transforms, mode="linear"), track_meta=False)
        return self.labels.to_label(probs), probs

    def _targets(self, cases: Sequence[dict[str, Any]], out_dir: Path) -> dict[str, list[Path]]:
        """Output files per case id; refuses existing ones (without overwrite) and any that is an input file."""
        targets = {c["id"]: [out_dir / f"{c['id']}.nii.gz"] for c in cases}
        if self.options.save_probabilities:
            for c in cases:
                targets[c["id"]].append(out_dir / f"{c['id']}_probabilities.nii.gz")
        inputs = {Path(p).resolve() for c in cases for p in _image_files(c)}
        every = [p for paths in targets.values() for p in paths]
        clash = [p for p in every if p.resolve() in inputs]
        if clash:
            raise InputError(f"{clash[0]}: is an input file; choose another output folder")
        if not self.options.overwrite:
            existing = [str(p) for p in every if p.exists()]
            if existing:
                raise InputError(f"{existing[0]} exists (and {len(existing) - 1} more); pass --overwrite to replace")
        return targets

    def predict_to_folder(self, cases: Sequence[dict[str, Any]], out_dir: Path, progress: bool = True) -> list[Path]:
        """Predict every case and write ``<id>.nii.gz`` (and ``<id>_probabilities.nii.gz``) into ``out_dir``.

        Before anything is written, the outputs are checked (no existing file without ``overwrite``, never an
        input file) and then every file of every case completely (:meth:`check_cases`: headers, channels,
        grids and voxel data), so that a bad input anywhere in the batch is refused with one line naming every
        bad input and nothing written. The folder is created with the first result; each file is written
        atomically, so an interrupted run (or a failure of the machine) leaves only complete outputs, of the
        cases before it.
        """
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(f"{out_dir}: exists and is not a folder")
        targets = self._targets(cases, out_dir)
        written = []
        with Progress(disable=not progress, transient=True) as bar:
            self.check_cases(cases, bar)
            task = bar.add_task("Predicting", total=len(cases))
            for case in cases:
                label, probs = self.predict_case(case)
                reference = nib.load(str(_image_files(case)[0]))  # header only; the file was validated when loaded
                if label.shape != tuple(reference.shape[:3]):
                    raise InputError(
                        f"case {case['id']}: prediction grid {label.shape} differs from input {reference.shape}"
                    )
                mask_path, *prob_path = targets[case["id"]]
                out_dir.mkdir(parents=True, exist_ok=True)  # only now: a refused first case leaves nothing behind
                written.append(save_nifti(label, reference.affine, mask_path, header=reference.header,
                                          overwrite=self.options.overwrite))
                if prob_path:
                    save_nifti(np.moveaxis(probs.numpy(), 0, -1), reference.affine, prob_path[0],
                               overwrite=self.options.overwrite, dtype=np.float32)
                del label, probs
                bar.advance(task)
        return written
