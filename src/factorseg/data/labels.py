"""Label conventions: dataset label values <-> network targets and back.

A :class:`LabelSpec` says how the integer values stored in a dataset's label files map to the
network's output channels, and how the network's decisions map back to those values:

* ``mode="classes"`` (softmax): output channel ``i`` is the class whose dataset value is
  ``values[i]``; channel 0 is the background. Values need not be contiguous (e.g. 0, 5, 10).
  Targets are class-index maps with one leading channel (what MONAI's ``DiceCELoss(to_onehot_y=True)``
  expects).
* ``mode="regions"`` (sigmoid, nested BraTS-style): output channel ``i`` is the region made of the
  dataset values in ``regions[i]`` (e.g. tumour core = necrosis + enhancing). Targets are float 0/1 maps,
  one channel per region. Back to dataset values, regions are painted from the largest to the smallest,
  each with its ``fill`` value (e.g. BraTS 2021: WT -> 2, then TC -> 1, then ET -> 4).

The spec is the one place that knows which of the two it is: the loss flags (:attr:`LabelSpec.loss_options`),
the activation (:meth:`LabelSpec.activate`), the decisions per scored structure (:meth:`LabelSpec.structure_masks`,
as validation scores them), the structures evaluation scores (:meth:`LabelSpec.structures`) and the map back to
dataset values (:meth:`LabelSpec.to_label`) all live here, so no caller branches on the mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from monai.data import MetaTensor

from factorseg.errors import InputError

__all__ = ["LABEL_SPECS", "LabelSpec", "get_label_spec", "round_labels"]

# Float label files (e.g. BRATS 2015 OTMultiClass) are rounded; values further than this from an
# integer mean the label was interpolated or is not a label at all.
_ROUND_TOLERANCE = 1e-3


def round_labels(values: np.ndarray, source: str = "label") -> np.ndarray:
    """Label values as int64: booleans and integers as they are, floats (label files with a scale slope, as
    every NIfTI read gives) rounded to the nearest integer; NaN, non-integers and non-numbers raise InputError.

    The one place where label maps become integers: ``source`` (a file name) starts the error message.
    """
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"{source}: label dtype {arr.dtype} is not numeric")
    rounded = np.rint(arr)
    if arr.size and not np.all(np.isfinite(arr)):
        raise InputError(f"{source}: label contains NaN or infinite values")
    if arr.size and float(np.max(np.abs(arr - rounded))) > _ROUND_TOLERANCE:
        raise InputError(f"{source}: not a label map (non-integer values: interpolated with a non-nearest mode?)")
    return rounded.astype(np.int64)


def _as_int_array(label: np.ndarray | torch.Tensor, source: str) -> np.ndarray:
    """``label`` (numpy, torch or MetaTensor) as an int64 numpy array (:func:`round_labels`)."""
    if isinstance(label, MetaTensor):
        label = label.as_tensor()
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu().numpy()
    return round_labels(label, source)


def _smallest_int_dtype(values: Iterable[int]) -> np.dtype:
    """Smallest integer dtype holding every value (uint8 for the usual small label sets)."""
    vals = list(values)
    return np.result_type(np.min_scalar_type(min(vals)), np.min_scalar_type(max(vals)))


def _like(out: torch.Tensor, ref: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Carry MetaTensor metadata (affine, applied operations) from ``ref`` over to ``out``."""
    if isinstance(ref, MetaTensor):
        return MetaTensor(out, meta=dict(ref.meta), applied_operations=list(ref.applied_operations))
    return out


@dataclass(frozen=True)
class LabelSpec:
    """How a dataset's label values map to network output channels (see module docstring).

    Attributes:
        mode: ``"classes"`` (softmax, background is channel 0) or ``"regions"`` (sigmoid, one channel per region).
        names: one name per network output channel.
        values: classes: the dataset value of each channel; regions: every allowed dataset value (0 included).
        regions: regions only: the dataset values making up each channel's region.
        fill: regions only: the value written where a channel is the innermost positive region.
        convention: short name used in messages (e.g. ``"brats2021"``).
    """

    mode: Literal["classes", "regions"]
    names: tuple[str, ...]
    values: tuple[int, ...]
    regions: tuple[tuple[int, ...], ...] = ()
    fill: tuple[int, ...] = ()
    convention: str = "custom"
    _paint_order: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "values", tuple(int(v) for v in self.values))
        object.__setattr__(self, "regions", tuple(tuple(sorted(int(v) for v in r)) for r in self.regions))
        object.__setattr__(self, "fill", tuple(int(v) for v in self.fill))
        if len(set(self.values)) != len(self.values):
            raise InputError(f"label values {list(self.values)} contain duplicates")
        if self.mode == "classes":
            if len(self.values) < 2:
                raise InputError("a 'classes' label spec needs a background and at least one class")
            if len(self.names) != len(self.values):
                raise InputError(f"{len(self.names)} class names for {len(self.values)} label values")
            if self.regions or self.fill:
                raise InputError("'regions' and 'fill' are only used with mode 'regions'")
        elif self.mode == "regions":
            self._check_regions()
        else:
            raise InputError(f"label mode must be 'classes' or 'regions', got {self.mode!r}")

    def _check_regions(self) -> None:
        """Check that regions are non-empty, use allowed values and are nested or disjoint."""
        n = len(self.regions)
        if n == 0 or len(self.names) != n or len(self.fill) != n:
            raise InputError(
                "regions spec needs one name, region and fill value per channel "
                f"(got {len(self.names)}, {n}, {len(self.fill)})"
            )
        allowed = set(self.values)
        if 0 not in allowed:
            raise InputError("regions spec: value 0 (background) must be among the allowed values")
        sets = [frozenset(r) for r in self.regions]
        for name, s, f in zip(self.names, sets, self.fill):
            if not s or 0 in s or not s <= allowed:
                raise InputError(f"region {name!r}: values {sorted(s)} must be non-zero allowed label values")
            if f not in s:
                raise InputError(f"region {name!r}: fill value {f} is not one of its values {sorted(s)}")
        for i in range(n):
            for j in range(i + 1, n):
                a, b = sets[i], sets[j]
                if a & b and not (a <= b or b <= a):
                    raise InputError(f"regions {self.names[i]!r} and {self.names[j]!r} overlap without nesting")
        # Paint the largest region first so that inner regions overwrite outer ones.
        order = tuple(sorted(range(n), key=lambda k: -len(sets[k])))
        object.__setattr__(self, "_paint_order", order)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def classes_from_values(
        cls, values: Sequence[int], names: Sequence[str] | None = None, convention: str = "custom"
    ) -> LabelSpec:
        """Softmax classes for the given dataset values; the smallest value (normally 0) is the background."""
        vals = [int(v) for v in values]
        if names is None:
            names = ["background"] + [f"class{v}" for v in sorted(vals)[1:]]
        if len(names) != len(vals):
            raise InputError(f"{len(names)} label names for {len(vals)} label values")
        pairs = sorted(zip(vals, names))
        return cls("classes", tuple(n for _, n in pairs), tuple(v for v, _ in pairs), convention=convention)

    @classmethod
    def regions_from_sets(
        cls,
        names: Sequence[str],
        regions: Sequence[Iterable[int]],
        fill: Sequence[int] | None = None,
        values: Iterable[int] | None = None,
        convention: str = "custom",
    ) -> LabelSpec:
        """Nested sigmoid regions; ``fill`` defaults to the one value of each region not in a smaller region."""
        region_sets = [frozenset(int(v) for v in r) for r in regions]
        if fill is None:
            fill = []
            for name, s in zip(names, region_sets):
                own = s - frozenset().union(*(t for t in region_sets if t < s))
                if len(own) != 1:
                    raise InputError(f"region {name!r}: cannot infer its fill value from {sorted(own)}; give 'fill'")
                fill.append(next(iter(own)))
        allowed = {0}.union(*region_sets) if values is None else {int(v) for v in values}
        regions_t = tuple(tuple(s) for s in region_sets)
        return cls("regions", tuple(names), tuple(sorted(allowed)), regions_t, tuple(fill), convention)

    @classmethod
    def from_json_labels(cls, labels: Mapping[str, Any], regions_class_order: Sequence[int] | None = None) -> LabelSpec:
        """Build a spec from a dataset.json ``labels`` entry.

        Accepts MSD / nnU-Net v1 style (``{"0": "background", "1": "tumour"}``, value -> name), nnU-Net v2
        style (``{"background": 0, "tumour": 1}``, name -> value) and nnU-Net v2 region-based labels
        (``{"background": 0, "whole": [1, 2, 3], ...}`` with ``regions_class_order``).
        """
        if not isinstance(labels, Mapping) or not labels:
            raise InputError(f"'labels' must be a non-empty mapping, got {labels!r}")
        items = list(labels.items())
        if all(isinstance(v, str) for _, v in items):
            try:
                pairs = [(int(k), v) for k, v in items]
            except ValueError as exc:
                raise InputError(f"'labels' keys must be integers when its values are names: {dict(labels)}") from exc
            return cls.classes_from_values([p[0] for p in pairs], [p[1] for p in pairs], convention="dataset.json")
        if any(isinstance(v, (list, tuple)) for _, v in items):
            fg = [(k, v) for k, v in items if not (isinstance(v, int) and v == 0)]
            region_sets = [[v] if isinstance(v, int) else list(v) for _, v in fg]
            return cls.regions_from_sets(
                [k for k, _ in fg], region_sets, fill=regions_class_order, convention="dataset.json"
            )
        if all(isinstance(v, int) and not isinstance(v, bool) for _, v in items):
            return cls.classes_from_values([v for _, v in items], [k for k, _ in items], convention="dataset.json")
        raise InputError(f"cannot read 'labels' {dict(labels)}: expected value->name or name->value pairs")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelSpec:
        """Inverse of :meth:`to_dict` (e.g. when reading a checkpoint)."""
        try:
            return cls(
                mode=d["mode"],
                names=tuple(d["names"]),
                values=tuple(d["values"]),
                regions=tuple(tuple(r) for r in d.get("regions", ())),
                fill=tuple(d.get("fill", ())),
                convention=d.get("convention", "custom"),
            )
        except (KeyError, TypeError) as exc:
            raise InputError(f"invalid label spec {dict(d)!r}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-friendly description, stored with trained models."""
        d: dict[str, Any] = {"mode": self.mode, "names": list(self.names), "values": list(self.values)}
        if self.mode == "regions":
            d["regions"] = [list(r) for r in self.regions]
            d["fill"] = list(self.fill)
        d["convention"] = self.convention
        return d

    # ------------------------------------------------------------------ mapping
    @property
    def num_outputs(self) -> int:
        """Number of network output channels."""
        return len(self.names)

    # ------------------------------------------------------------------ what callers need, one home per mode
    @property
    def _first_scored(self) -> int:
        """First output channel that is a scored structure: classes skip the background channel 0."""
        return 0 if self.mode == "regions" else 1

    @property
    def structure_names(self) -> tuple[str, ...]:
        """Names of the scored structures (every region; every class but the background), in channel order."""
        return self.names[self._first_scored :]

    def _channel_values(self) -> tuple[tuple[int, ...], ...]:
        """The dataset values each output channel stands for (a region's value set, a class's one value)."""
        return self.regions if self.mode == "regions" else tuple((v,) for v in self.values)

    def structures(self) -> dict[str, set[int]]:
        """``{structure name: dataset label values}`` of the scored structures, as the evaluation scores them."""
        return {n: set(v) for n, v in zip(self.structure_names, self._channel_values()[self._first_scored :])}

    def describe(self, with_values: bool = False) -> str:
        """The outputs in words for messages: the scored structures (``3 sigmoid regions (TC, WT, ET)``,
        ``2 classes (PZ, TZ)``), or with ``with_values`` every output channel and the dataset values it stands
        for (``3 softmax classes (background=0, PZ=1, TZ=2)``, ``2 sigmoid regions (WT=1+2, ET=2)``)."""
        regions = self.mode == "regions"
        if with_values:
            parts = [f"{n}={'+'.join(map(str, v))}" for n, v in zip(self.names, self._channel_values())]
            noun = "sigmoid region" if regions else "softmax class"
        else:
            parts, noun = list(self.structure_names), "sigmoid region" if regions else "class"
        plural = "" if len(parts) == 1 else "s" if regions else "es"
        return f"{len(parts)} {noun}{plural} ({', '.join(parts)})"

    @property
    def loss_options(self) -> dict[str, bool]:
        """MONAI ``DiceCELoss`` flags for these targets: sigmoid Dice on every region, or softmax Dice on one-hot
        class indices with the background left out of the Dice (MONAI's CE term is then BCE for one output
        channel and cross-entropy over the channels otherwise)."""
        if self.mode == "regions":
            return {"sigmoid": True, "include_background": True}
        return {"to_onehot_y": True, "softmax": True, "include_background": False}

    def activate(self, logits: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Probabilities of ``(B, C, *spatial)`` logits: sigmoid per region, or softmax over the class channels.

        ``inplace`` overwrites ``logits`` (floating point) and returns it, so that full-volume maps are not
        copied; :meth:`to_label` turns the (averaged) probabilities into dataset values.
        """
        if not inplace:
            return torch.sigmoid(logits) if self.mode == "regions" else torch.softmax(logits, dim=1)
        if self.mode == "regions":
            return logits.sigmoid_()
        logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
        return logits.div_(logits.sum(dim=1, keepdim=True))

    def structure_masks(self, logits: torch.Tensor) -> torch.Tensor:
        """Boolean decisions ``(B, S, *spatial)`` per scored structure from ``(B, C, *spatial)`` logits: regions
        where the sigmoid is above 0.5 (as in :meth:`to_label`), classes where they win the argmax."""
        if self.mode == "regions":
            return self.activate(logits) > 0.5
        return self.target_masks(logits.argmax(dim=1, keepdim=True))

    def target_masks(self, target: torch.Tensor) -> torch.Tensor:
        """Boolean masks ``(B, S, *spatial)`` per scored structure from batched :meth:`to_target` outputs
        (``(B, C, *spatial)`` 0/1 regions or ``(B, 1, *spatial)`` class indices)."""
        if self.mode == "regions":
            return target > 0.5
        channels = torch.arange(1, self.num_outputs, device=target.device).view(1, -1, *[1] * (target.dim() - 2))
        return target.long() == channels

    def validate(self, values: Iterable[int] | np.ndarray | torch.Tensor, source: str = "label") -> None:
        """Raise InputError if any value (or any voxel of a label array) is not an allowed dataset value."""
        if isinstance(values, (np.ndarray, torch.Tensor)):
            arr = _as_int_array(values, source).ravel()
            if arr.size and arr.min() >= 0 and arr.max() < 1 << 16:
                present = np.flatnonzero(np.bincount(arr))  # linear time: labels are small non-negative ints
            else:
                present = np.unique(arr)
        else:
            present = np.unique(_as_int_array(np.fromiter((float(v) for v in values), dtype=np.float64), source))
        unknown = sorted(set(present.tolist()) - set(self.values))
        if unknown:
            raise InputError(
                f"{source}: label values {unknown} are not in the {self.convention} convention "
                f"(allowed: {list(self.values)})"
            )

    def to_target(self, label: np.ndarray | torch.Tensor, source: str = "label") -> torch.Tensor:
        """Dataset label -> network target.

        ``label`` is spatial ``(*spatial)`` with 3 spatial dims, or channel-first ``(1, *spatial)``.
        classes: int64 class-index map ``(1, *spatial)``; regions: float32 ``(num_regions, *spatial)``.
        MetaTensor metadata is kept.
        """
        arr = _as_int_array(label, source)
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        elif arr.ndim != 3:
            raise InputError(f"{source}: expected a 3D label or (1, X, Y, Z), got shape {tuple(arr.shape)}")
        self.validate(arr, source)
        if self.mode == "classes":
            # values are sorted, so searchsorted maps each value to its channel index.
            order = np.argsort(self.values)
            idx = order[np.searchsorted(np.asarray(self.values)[order], arr)]
            out = torch.from_numpy(idx[None].astype(np.int64))
        else:
            out = torch.from_numpy(np.stack([np.isin(arr, r) for r in self.regions]).astype(np.float32))
        return _like(out, label)

    def to_label(self, pred: np.ndarray | torch.Tensor, threshold: float = 0.5) -> np.ndarray:
        """Network decisions ``(C, *spatial)`` -> dataset label values ``(*spatial)``.

        classes: ``C == num_outputs`` scores/probabilities/one-hot (argmax over channels), or ``C == 1``
        class-index map.
        regions: ``C == num_outputs`` probabilities or 0/1 masks, positive where ``> threshold``; regions are
        painted from the largest to the smallest with their ``fill`` values.
        """
        if isinstance(pred, MetaTensor):
            pred = pred.as_tensor()
        if isinstance(pred, torch.Tensor):
            p = pred.detach().cpu().numpy()
        else:
            p = np.asarray(pred)
        dtype = _smallest_int_dtype(self.values)
        if self.mode == "classes":
            if p.shape[0] == self.num_outputs:
                if p.ndim < 2:
                    raise InputError(f"prediction must be (channels, *spatial), got shape {p.shape}")
                values = np.asarray(self.values, dtype=dtype)
                out = np.empty(p.shape[1:], dtype=dtype)
                # Slab by slab: np.argmax gives int64, which would cost 8 bytes per voxel of the whole volume.
                step = max(1, (1 << 22) // max(1, int(np.prod(p.shape[2:], dtype=np.int64))))
                for start in range(0, p.shape[1], step):
                    out[start : start + step] = values[np.argmax(p[:, start : start + step], axis=0)]
                return out
            if p.shape[0] == 1:
                idx = _as_int_array(p[0], "prediction")
                if idx.size and (idx.min() < 0 or idx.max() >= self.num_outputs):
                    raise InputError(f"prediction: class indices must lie in [0, {self.num_outputs - 1}]")
            else:
                raise InputError(f"prediction has {p.shape[0]} channels; expected {self.num_outputs} or 1")
            return np.asarray(self.values, dtype=dtype)[idx]
        if p.shape[0] != self.num_outputs:
            raise InputError(f"prediction has {p.shape[0]} channels; expected {self.num_outputs} regions")
        out = np.zeros(p.shape[1:], dtype=dtype)
        for k in self._paint_order:
            out[p[k] > threshold] = self.fill[k]
        return out


# TC, WT, ET in the channel order of MONAI's ConvertToMultiChannelBasedOnBratsClasses.
_REGION_NAMES = ("TC", "WT", "ET")

LABEL_SPECS: dict[str, LabelSpec] = {
    # MSD Task01: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour.
    "msd_task01": LabelSpec("regions", _REGION_NAMES, (0, 1, 2, 3), ((2, 3), (1, 2, 3), (3,)), (2, 1, 3), "msd_task01"),
    # BraTS 2021: 1 necrotic/non-enhancing core, 2 edema, 4 enhancing tumour.
    "brats2021": LabelSpec("regions", _REGION_NAMES, (0, 1, 2, 4), ((1, 4), (1, 2, 4), (4,)), (1, 2, 4), "brats2021"),
    # BraTS 2023: 1 necrotic core, 2 edema, 3 enhancing tumour.
    "brats2023": LabelSpec("regions", _REGION_NAMES, (0, 1, 2, 3), ((1, 3), (1, 2, 3), (3,)), (1, 2, 3), "brats2023"),
    # BRATS 2015: 1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing. Necrosis and non-enhancing are both
    # "core minus enhancing", so predictions write 1 there (as later BraTS editions merged them).
    "brats2015": LabelSpec(
        "regions", _REGION_NAMES, (0, 1, 2, 3, 4), ((1, 3, 4), (1, 2, 3, 4), (4,)), (1, 2, 4), "brats2015"
    ),
    # ISLES'22: binary ischemic stroke lesion, one sigmoid channel as in the paper.
    "isles22": LabelSpec("regions", ("lesion",), (0, 1), ((1,),), (1,), "isles22"),
}


def get_label_spec(name: str | LabelSpec | Mapping[str, Any]) -> LabelSpec:
    """A spec from the registry by name (or from its dict form); InputError for unknown names."""
    if isinstance(name, LabelSpec):
        return name
    if isinstance(name, Mapping):
        return LabelSpec.from_dict(name)
    try:
        return LABEL_SPECS[name]
    except KeyError:
        raise InputError(f"unknown label convention {name!r}; known: {', '.join(sorted(LABEL_SPECS))}") from None
