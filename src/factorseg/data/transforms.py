"""MONAI transform pipelines for training, validation and inference.

All pipelines start with :class:`LoadCased`, which reads a case's channel files through the validating
:func:`factorseg.io.nifti.read_image` (one-line errors for bad files), resamples channels that lie on a nearby grid
(ISLES'22 FLAIR) onto the first channel's grid, refuses channels that do not cover the same field of view, and
checks the label's grid and values.
The geometry steps (orientation, spacing, foreground crop) are MONAI invertible transforms, so a prediction
made on the transformed image can be mapped back to the first channel's own grid with
:func:`invert_prediction`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor, NibabelReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.transforms import (
    Compose,
    CropForegroundd,
    Invertd,
    LoadImage,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ResampleToMatch,
    Spacingd,
    SpatialPadd,
)

from factorseg.data.labels import LabelSpec
from factorseg.errors import InputError, InputWarning
from factorseg.io import Volume, check_same_grid, read_image

__all__ = [
    "LabelToTargetd",
    "LoadCased",
    "TransformConfig",
    "infer_transforms",
    "invert_prediction",
    "train_transforms",
    "val_transforms",
]

IMAGE_KEY = "image"
LABEL_KEY = "label"
#: A channel (or label) on another grid is resampled when it covers at least this fraction of the first
#: channel's field of view, and refused otherwise (see :func:`factorseg.io.nifti.check_same_grid`).
MIN_COVERAGE = 0.8


@dataclass
class TransformConfig:
    """Preprocessing and augmentation settings (stored in recipes and checkpoints).

    Attributes:
        spacing: target voxel spacing in mm, or None to keep each image's spacing.
        orientation: target axis codes (e.g. "RAS"), or None to keep the stored orientation.
        roi_size: training patch size in voxels.
        crop_foreground: crop to the bounding box of non-zero image voxels.
        num_samples: patches drawn per loaded volume.
        pos_neg_ratio: patches centred on foreground per patch centred on background.
        augment: master switch for the random augmentations below.
        rotate_deg, scale, affine_prob: random rotation (+-deg per axis), scaling (+-fraction), probability.
        flip_axes, flip_prob: axes flipped independently, each with this probability.
        intensity_scale, intensity_shift, intensity_prob: random intensity scaling / shift (in std units).
        noise_std, noise_prob: additive Gaussian noise.
    """

    spacing: tuple[float, float, float] | None = None
    orientation: str | None = "RAS"
    roi_size: tuple[int, int, int] = (128, 128, 128)
    crop_foreground: bool = True
    num_samples: int = 2
    pos_neg_ratio: float = 1.0
    augment: bool = True
    rotate_deg: float = 15.0
    scale: float = 0.1
    affine_prob: float = 0.2
    flip_axes: tuple[int, ...] = (0, 1, 2)
    flip_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    intensity_prob: float = 1.0
    noise_std: float = 0.1
    noise_prob: float = 0.15

    def __post_init__(self) -> None:
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
            if len(self.spacing) != 3 or min(self.spacing) <= 0:
                raise InputError(f"spacing must be three positive numbers, got {self.spacing}")
        self.roi_size = tuple(int(s) for s in self.roi_size)  # type: ignore[assignment]
        if len(self.roi_size) != 3 or min(self.roi_size) < 1:
            raise InputError(f"roi_size must be three positive integers, got {self.roi_size}")
        self.flip_axes = tuple(int(a) for a in self.flip_axes)
        if not set(self.flip_axes) <= {0, 1, 2}:
            raise InputError(f"flip_axes must be among 0, 1, 2, got {self.flip_axes}")
        if self.orientation is not None:
            codes = self.orientation.upper()
            axes = [{"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}.get(c) for c in codes]
            if len(codes) != 3 or None in axes or len(set(axes)) != 3:
                raise InputError(f"orientation must be three axis codes such as 'RAS', got {self.orientation!r}")
            self.orientation = codes
        if self.num_samples < 1:
            raise InputError(f"num_samples must be >= 1, got {self.num_samples}")
        for name in ("pos_neg_ratio", "rotate_deg", "scale", "intensity_scale", "intensity_shift", "noise_std"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("affine_prob", "flip_prob", "intensity_prob", "noise_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TransformConfig:
        """Build from a recipe / checkpoint mapping; unknown keys are an error (typos must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown transform option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def nonzero(x: torch.Tensor) -> torch.Tensor:
    """Foreground for cropping: any non-zero voxel (z-scored inputs have negative brain values)."""
    return x != 0


class _VolumeReader(NibabelReader):
    """MONAI's NibabelReader over an already validated in-memory :class:`~factorseg.io.nifti.Volume` (no second read)."""

    def __init__(self, volume: Volume) -> None:
        super().__init__()
        self.volume = volume

    def read(self, data: Any, **kwargs: Any) -> nib.Nifti1Image:
        self.filenames = (str(self.volume.path),)
        img = nib.Nifti1Image(self.volume.array, self.volume.affine, self.volume.header)
        return correct_nifti_header_if_necessary(img)


class LoadCased(MapTransform):
    """Load a case: channel files -> one channel-first MetaTensor on the first channel's grid; label checked.

    ``d[image_key]`` is a path or a list of paths (one 3D file per channel, or one 3D/4D file). Every file is
    read through :func:`factorseg.io.nifti.read_image`, so a corrupt, truncated, non-NIfTI, 2D or 4D (where 3D is
    expected) file or NaN/infinite voxels raise a one-line :class:`InputError`. Channels on a different grid
    that covers at least ``min_coverage`` of the first channel's field of view are resampled (linearly) onto
    the first channel's grid with an :class:`~factorseg.errors.InputWarning`; channels further off are refused
    (see :func:`factorseg.io.nifti.check_same_grid`). The label follows the same rule with nearest-neighbour
    resampling, and with ``labels`` its values are checked against the convention.
    """

    def __init__(
        self,
        image_key: str = IMAGE_KEY,
        label_key: str | None = LABEL_KEY,
        labels: LabelSpec | None = None,
        min_coverage: float = MIN_COVERAGE,
    ) -> None:
        keys = [image_key] + ([label_key] if label_key else [])
        super().__init__(keys, allow_missing_keys=True)
        self.image_key = image_key
        self.label_key = label_key
        self.labels = labels
        self.min_coverage = min_coverage
        self._loader = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True, dtype=np.float32)
        self._resample = ResampleToMatch(mode="bilinear", padding_mode="zeros")
        self._resample_label = ResampleToMatch(mode="nearest", padding_mode="zeros")

    def _tensor(self, volume: Volume) -> MetaTensor:
        """Channel-first MetaTensor with MONAI's NIfTI metadata, sharing the volume's memory."""
        return self._loader(str(volume.path), reader=_VolumeReader(volume))

    def _needs_resampling(self, ref: Volume, other: Volume) -> bool:
        """Whether ``other`` lies on another grid than ``ref`` but close enough to be resampled (with a warning);
        InputError when it is too far off (:func:`factorseg.io.nifti.check_same_grid`)."""
        messages = check_same_grid([ref, other], min_coverage=self.min_coverage)
        for message in messages:
            warnings.warn(message, InputWarning, stacklevel=3)
        return bool(messages)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        paths = d[self.image_key]
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not paths:
            raise InputError(f"case {d.get('id', '?')}: no image files")
        volumes = [read_image(p, expect_3d=len(paths) > 1) for p in paths]
        ref_volume = volumes[0]
        resample = [self._needs_resampling(ref_volume, volume) for volume in volumes[1:]]
        ref = self._tensor(ref_volume)
        if len(volumes) == 1:
            d[self.image_key] = ref
        else:
            parts = [ref.as_tensor()]
            for volume, moved in zip(volumes[1:], resample):
                chan = self._tensor(volume)
                parts.append((self._resample(chan, img_dst=ref) if moved else chan).as_tensor())
            d[self.image_key] = MetaTensor(torch.cat(parts, dim=0), meta=copy.deepcopy(ref.meta))
        if self.label_key and self.label_key in d:
            source = read_image(d[self.label_key])
            if self.labels is not None:
                self.labels.validate(source.array, source=str(source.path))
            label = self._tensor(source)
            if self._needs_resampling(ref_volume, source):
                label = self._resample_label(label, img_dst=ref)
            label = MetaTensor(label.as_tensor(), meta=copy.deepcopy(label.meta))
            label.affine = ref.affine.clone()
            d[self.label_key] = label
        return d


class LabelToTargetd(MapTransform):
    """Dataset label values -> network target with :meth:`LabelSpec.to_target` (validates the values)."""

    def __init__(self, labels: LabelSpec, keys: str | Sequence[str] = LABEL_KEY) -> None:
        super().__init__(keys)
        self.labels = labels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            source = str(label.meta.get("filename_or_obj", key)) if isinstance(label, MetaTensor) else str(key)
            d[key] = self.labels.to_target(label, source=source)
        return d


class ToLabeld(MapTransform):
    """Network probabilities ``(C, *spatial)`` -> dataset label values ``(1, *spatial)`` with
    :meth:`LabelSpec.to_label` (argmax for classes, nested regions painted with their values); metadata kept.

    ``labels``: a :class:`LabelSpec`, its :meth:`~LabelSpec.to_dict` form (as MONAI bundle configs give it)
    or a convention name.
    """

    def __init__(self, keys: str | Sequence[str], labels: LabelSpec | Mapping[str, Any] | str) -> None:
        super().__init__(keys)
        if isinstance(labels, LabelSpec):
            self.labels = labels
        elif isinstance(labels, str):
            from factorseg.data.labels import get_label_spec

            self.labels = get_label_spec(labels)
        else:
            self.labels = LabelSpec.from_dict(labels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            out = torch.from_numpy(self.labels.to_label(d[key])[None])
            d[key] = MetaTensor(out, meta=copy.deepcopy(d[key].meta)) if isinstance(d[key], MetaTensor) else out
        return d


def geometry_steps(cfg: TransformConfig, keys: list[str], modes: list[str]) -> list[tuple[type, dict[str, Any]]]:
    """Orientation, spacing, foreground crop and intensity normalisation shared by all pipelines, as
    (MONAI transform class, arguments): built by the pipelines here and spelt out in exported MONAI bundles."""
    out: list[tuple[type, dict[str, Any]]] = []
    if cfg.orientation:
        out.append((Orientationd, {"keys": keys, "axcodes": cfg.orientation, "labels": None}))
    if cfg.spacing:
        out.append((Spacingd, {"keys": keys, "pixdim": list(cfg.spacing), "mode": modes}))
    if cfg.crop_foreground:
        out.append((CropForegroundd, {"keys": keys, "source_key": IMAGE_KEY, "select_fn": nonzero,
                                      "start_coord_key": None, "end_coord_key": None}))
    out.append((NormalizeIntensityd, {"keys": IMAGE_KEY, "nonzero": True, "channel_wise": True}))
    return out


def _geometry(cfg: TransformConfig, keys: list[str], modes: list[str]) -> list[Any]:
    """The :func:`geometry_steps` as transforms."""
    return [cls(**kwargs) for cls, kwargs in geometry_steps(cfg, keys, modes)]


def _augmentations(cfg: TransformConfig, keys: list[str]) -> list[Any]:
    """Random spatial and intensity augmentations enabled by ``cfg`` (patch-level)."""
    if not cfg.augment:
        return []
    out: list[Any] = []
    if cfg.affine_prob > 0 and (cfg.rotate_deg > 0 or cfg.scale > 0):
        out.append(
            RandAffined(
                keys,
                prob=cfg.affine_prob,
                rotate_range=[math.radians(cfg.rotate_deg)] * 3,
                scale_range=[cfg.scale] * 3,
                mode=["bilinear", "nearest"],
                padding_mode="zeros",
                spatial_size=cfg.roi_size,
                cache_grid=True,
            )
        )
    if cfg.flip_prob > 0:
        out.extend(RandFlipd(keys, prob=cfg.flip_prob, spatial_axis=a) for a in cfg.flip_axes)
    if cfg.intensity_prob > 0 and cfg.intensity_scale > 0:
        out.append(RandScaleIntensityd(IMAGE_KEY, factors=cfg.intensity_scale, prob=cfg.intensity_prob))
    if cfg.intensity_prob > 0 and cfg.intensity_shift > 0:
        out.append(RandShiftIntensityd(IMAGE_KEY, offsets=cfg.intensity_shift, prob=cfg.intensity_prob))
    if cfg.noise_prob > 0 and cfg.noise_std > 0:
        out.append(RandGaussianNoised(IMAGE_KEY, std=cfg.noise_std, prob=cfg.noise_prob))
    return out


def train_transforms(cfg: TransformConfig, labels: LabelSpec) -> Compose:
    """Training pipeline: load, resample, normalise, pad, draw ``num_samples`` patches, augment, make targets.

    Returns a list of ``num_samples`` dicts per case; seed with ``Compose.set_random_state``.
    """
    keys = [IMAGE_KEY, LABEL_KEY]
    return Compose(
        [
            LoadCased(labels=labels),
            *_geometry(cfg, keys, ["bilinear", "nearest"]),
            SpatialPadd(keys, spatial_size=cfg.roi_size),
            RandCropByPosNegLabeld(
                keys,
                label_key=LABEL_KEY,
                spatial_size=cfg.roi_size,
                pos=cfg.pos_neg_ratio,
                neg=1.0,
                num_samples=cfg.num_samples,
            ),
            *_augmentations(cfg, keys),
            LabelToTargetd(labels),
        ]
    )


def val_transforms(cfg: TransformConfig, labels: LabelSpec) -> Compose:
    """Validation pipeline: deterministic preprocessing of the full volume (for sliding-window inference)."""
    keys = [IMAGE_KEY, LABEL_KEY]
    return Compose([LoadCased(labels=labels), *_geometry(cfg, keys, ["bilinear", "nearest"]), LabelToTargetd(labels)])


def infer_transforms(cfg: TransformConfig) -> Compose:
    """Inference pipeline for images only; keeps the metadata that :func:`invert_prediction` needs."""
    return Compose([LoadCased(label_key=None), *_geometry(cfg, [IMAGE_KEY], ["bilinear"])])


def invert_prediction(
    pred: torch.Tensor,
    data: Mapping[Hashable, Any],
    transforms: Compose,
    mode: Literal["nearest", "linear"] = "nearest",
) -> torch.Tensor:
    """Map a prediction made on ``data["image"]`` back onto the original grid of the case's first channel.

    Args:
        pred: ``(C, *spatial)`` (or ``(1, C, *spatial)``) on the transformed image's grid. Invert probabilities
            or index maps, not logits: regions cropped away by the foreground crop come back as zeros.
        data: the un-batched output of ``transforms`` for this case.
        transforms: the pipeline that produced ``data`` (normally :func:`infer_transforms`).
        mode: ``"nearest"`` for label/index maps, ``"linear"`` for probabilities.

    Returns:
        MetaTensor ``(C, *original_spatial)`` with the original affine; integer inputs stay integer.
    """
    image = data.get(IMAGE_KEY)
    if not isinstance(image, MetaTensor):
        raise InputError("invert_prediction: data['image'] must be the MetaTensor produced by the transforms")
    if mode not in ("nearest", "linear"):
        raise InputError(f"invert_prediction: mode must be 'nearest' or 'linear', got {mode!r}")
    if pred.ndim == image.ndim + 1 and pred.shape[0] == 1:
        pred = pred[0]
    if pred.ndim != image.ndim or pred.shape[1:] != image.shape[1:]:
        raise InputError(
            f"invert_prediction: prediction shape {tuple(pred.shape)} does not match the transformed image "
            f"{tuple(image.shape)} spatially"
        )
    integer = not torch.is_floating_point(pred)
    work = pred.detach().float()
    # Invertd takes the geometry history from data["image"]; the prediction only needs to be a MetaTensor.
    work = MetaTensor(work.as_tensor() if isinstance(work, MetaTensor) else work)
    inverter = Invertd(keys="pred", transform=transforms, orig_keys=IMAGE_KEY, nearest_interp=mode == "nearest")
    out = inverter({IMAGE_KEY: image, "pred": work})["pred"]
    if integer:
        out = torch.round(out).to(pred.dtype)
    return out
