"""The types of every config value and the checks of whole configs.

A config has five sections (:data:`SECTIONS`): ``model`` (registry name + constructor arguments), ``data``,
``transforms``, ``train`` and ``inference``. Every value has a type and a range: :data:`SCHEMA` for the last four
sections, :func:`factorizer_keys`, :data:`MODEL_COMMON` and :data:`BASELINE_SIZES` for ``model``.
:func:`validate_recipe` checks a whole recipe against them once, where a recipe enters (``factorseg train``, the
demo), and :func:`validate_bundle_config` checks the config of a trained model where it is loaded. Both raise
:class:`~factorseg.errors.InputError` with one line naming the key.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, get_args

from factorseg.errors import InputError

SECTIONS = ("model", "data", "transforms", "train", "inference")

# ---------------------------------------------------------------------------------------------- value types


def shown(value: Any) -> str:
    """A value as a message shows it (YAML spelling for null and booleans)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


class Spec:
    """The type and range of one config value; :meth:`check` raises one-line InputErrors."""

    desc = "a value"

    def check(self, value: Any, key: str) -> Any:
        raise NotImplementedError

    def fail(self, value: Any, key: str) -> InputError:
        return InputError(f"{key} must be {self.desc}, got {shown(value)}")


@dataclass
class Int(Spec):
    """An integer >= ``lo`` (and <= ``hi`` where the range is meaningful); ``cap`` is a sanity limit."""

    lo: int | None = None
    hi: int | None = None
    cap: int | None = None

    @property
    def desc(self) -> str:  # type: ignore[override]
        if self.lo is not None and self.hi is not None:
            return f"an integer in [{self.lo}, {self.hi}]"
        if self.lo is not None:
            return f"an integer >= {self.lo}"
        return "an integer"

    def check(self, value: Any, key: str) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(value, key)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise self.fail(value, key)
        if self.cap is not None and value > self.cap:
            raise InputError(f"{key} must be at most {self.cap}, got {value}")
        return value


@dataclass
class Num(Spec):
    """A finite number (integers too) in a range; ``cap`` is a sanity limit."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    cap: float | None = None

    @property
    def desc(self) -> str:  # type: ignore[override]
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"a number in {left}{_fmt(self.lo)}, {_fmt(self.hi)}{right}"
        if self.lo == 0 and self.lo_open:
            return "a positive number"
        if self.lo is not None:
            return f"a number {'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        return "a finite number"

    def check(self, value: Any, key: str) -> Any:
        if not _number(value):
            raise self.fail(value, key)
        bounded = self.lo is not None and self.hi is not None
        if not math.isfinite(value):
            if bounded:
                raise InputError(f"{key} must lie in {self.desc[len('a number in '):]}, got {shown(value)}")
            raise InputError(f"{key} must be {self.desc} (finite), got {shown(value)}")
        low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if low or high:
            if bounded:
                raise InputError(f"{key} must lie in {self.desc[len('a number in '):]}, got {shown(value)}")
            raise self.fail(value, key)
        if self.cap is not None and value > self.cap:
            raise InputError(f"{key} must be at most {_fmt(self.cap)}, got {shown(value)}")
        return value


class Bool(Spec):
    desc = "true or false"

    def check(self, value: Any, key: str) -> Any:
        if not isinstance(value, bool):
            raise self.fail(value, key)
        return value


class Text(Spec):
    desc = "a non-empty text"

    def check(self, value: Any, key: str) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(value, key)
        return value


class Choice(Spec):
    def __init__(self, *choices: Any) -> None:
        self.choices = choices

    @property
    def desc(self) -> str:  # type: ignore[override]
        names = list(dict.fromkeys(shown(c) if not isinstance(c, str) else c for c in self.choices))
        return names[0] if len(names) == 1 else "one of " + ", ".join(names)

    def check(self, value: Any, key: str) -> Any:
        if isinstance(value, bool) or not any(type(value) is type(c) and value == c for c in self.choices):
            raise self.fail(value, key)
        return value


class Seq(Spec):
    """A list (or tuple) of values of one type, with a fixed length or a length range."""

    def __init__(self, item: Spec, length: int | tuple[int, int]) -> None:
        self.item, self.length = item, length

    @property
    def desc(self) -> str:  # type: ignore[override]
        n = self.length
        count = str(n) if isinstance(n, int) else f"{n[0]} to {n[1]}"
        return f"a list of {count} values, each {self.item.desc}"

    def check(self, value: Any, key: str) -> Any:
        if not isinstance(value, list | tuple):
            raise self.fail(value, key)
        lo, hi = (self.length, self.length) if isinstance(self.length, int) else self.length
        if not lo <= len(value) <= hi:
            raise self.fail(value, key)
        for i, item in enumerate(value):
            self.item.check(item, f"{key}[{i}]")
        return value


class Either(Spec):
    """The first of several types that accepts the value."""

    def __init__(self, *options: Spec) -> None:
        self.options = options

    @property
    def desc(self) -> str:  # type: ignore[override]
        return " or ".join(o.desc for o in self.options)

    def check(self, value: Any, key: str) -> Any:
        errors = []
        for option in self.options:
            try:
                return option.check(value, key)
            except InputError as exc:
                errors.append(exc)
        # A value of the right kind that is out of range: say that, not the whole list of kinds.
        for option, exc in zip(self.options, errors):
            if not isinstance(option, Choice) and _same_kind(option, value):
                raise exc
        raise self.fail(value, key)


def _same_kind(spec: Spec, value: Any) -> bool:
    if isinstance(spec, Int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(spec, Num):
        return _number(value)
    if isinstance(spec, Seq):
        return isinstance(value, list | tuple)
    if isinstance(spec, LabelDict):
        return isinstance(value, Mapping)
    return False


class Null(Spec):
    """``null`` or a value of ``inner``."""

    def __init__(self, inner: Spec) -> None:
        self.inner = inner

    @property
    def desc(self) -> str:  # type: ignore[override]
        return f"{self.inner.desc} or null"

    def check(self, value: Any, key: str) -> Any:
        if value is None:
            return None
        try:
            return self.inner.check(value, key)
        except InputError as exc:
            if str(exc).startswith(f"{key} must be {self.inner.desc},"):
                raise self.fail(value, key) from None
            raise


class LabelDict(Spec):
    """A label convention in its dict form (:meth:`~factorseg.data.labels.LabelSpec.to_dict`)."""

    desc = "a label convention (mode, names, values[, regions, fill])"

    def check(self, value: Any, key: str) -> Any:
        check_labels(value, key)
        return value


def _prob() -> Num:
    return Num(0.0, 1.0)


def _precisions() -> tuple[Any, ...]:
    try:
        from lightning.fabric.plugins.precision.precision import (
            _PRECISION_INPUT_INT,
            _PRECISION_INPUT_STR,
            _PRECISION_INPUT_STR_ALIAS,
        )

        return ("auto", *get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS),
                *get_args(_PRECISION_INPUT_INT))
    except ImportError:  # pragma: no cover - another Lightning layout
        return ("auto", "32-true", "16-mixed", "bf16-mixed", "64-true", "16-true", "bf16-true", 64, 32, 16)


def _formats() -> tuple[str, ...]:
    from factorseg.data.formats import FORMATS

    return tuple(FORMATS)


def _label_names() -> tuple[str, ...]:
    from factorseg.data.labels import LABEL_SPECS

    return tuple(sorted(LABEL_SPECS))


def _model_names() -> tuple[str, ...]:
    from factorseg import models

    return tuple(models.available())


@dataclass
class Section:
    """The keys of one section: their types, which must be present in a recipe, and cross-key checks."""

    keys: dict[str, Spec]
    required: tuple[str, ...] = ()
    extra: Callable[[dict[str, Any], str], None] | None = None
    help: dict[str, str] = field(default_factory=dict)


def _check_data(data: dict[str, Any], prefix: str) -> None:
    fold, folds = data.get("fold"), data.get("folds")
    if isinstance(fold, int) and isinstance(folds, int) and fold >= folds:
        raise InputError(f"{prefix}data.fold={fold} but there are only {folds} folds (0 to {folds - 1}), "
                         "or use 'all' to train on every case")


_MAX_EDGE = 1024  # voxels per axis of a patch
_MAX_CHANNELS = 1024


def _sections() -> dict[str, Section]:
    """The types of every key of the ``data``, ``transforms``, ``train`` and ``inference`` sections."""
    return {
        "data": Section({
            "format": Null(Choice(*_formats())),
            "labels": Null(Either(Choice(*_label_names()), LabelDict())),
            "use_flair": Bool(),
            "folds": Int(2, cap=100),
            "fold": Either(Int(0), Choice("all")),
            "splits_file": Null(Text()),
            "cache": Bool(),
        }, required=("format", "labels", "folds", "fold"), extra=_check_data,
            help={"format": "dataset layout; null = detect", "labels": "label convention; null = the dataset's",
                  "fold": "the fold held out for validation, or 'all' (no validation)",
                  "splits_file": "null = <output>/splits.json"}),
        "transforms": Section({
            "spacing": Null(Seq(Num(0.0, lo_open=True, cap=100.0), 3)),
            "orientation": Null(Text()),
            "roi_size": Seq(Int(1, cap=_MAX_EDGE), 3),
            "crop_foreground": Bool(),
            "num_samples": Int(1, cap=64),
            "pos_neg_ratio": Num(0.0, cap=1000.0),
            "augment": Bool(),
            "rotate_deg": Num(0.0, 180.0),
            "scale": Num(0.0, 1.0, hi_open=True),
            "affine_prob": _prob(),
            "flip_axes": Seq(Choice(0, 1, 2), (0, 3)),
            "flip_prob": _prob(),
            "intensity_scale": Num(0.0, cap=100.0),
            "intensity_shift": Num(0.0, cap=100.0),
            "intensity_prob": _prob(),
            "noise_std": Num(0.0, cap=100.0),
            "noise_prob": _prob(),
        }, help={"spacing": "mm; null = keep each image's", "orientation": "axis codes such as RAS; null = keep"}),
        "train": Section({
            "seed": Int(0, cap=2**32 - 1),
            "epochs": Int(1, cap=10**7),
            "max_minutes": Null(Num(0.0, lo_open=True, cap=10.0**7)),
            "steps_per_epoch": Int(1, cap=10**7),
            "batch_size": Int(1, cap=4096),
            "lr": Num(0.0, lo_open=True),
            "weight_decay": Num(0.0),
            "warmup_epochs": Num(0.0, cap=10.0**7),
            "grad_clip": Null(Num(0.0)),
            "precision": Choice(*_precisions()),
            "val_interval": Int(1),
            "num_workers": Int(0, cap=256),
            "accelerator": Choice("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
            "devices": Either(Int(1, cap=4096), Choice(-1, "auto"), Seq(Int(0, cap=4096), (1, 4096))),
            "num_nodes": Int(1, cap=100000),
            "deep_supervision_weights": Null(Seq(Num(0.0), (1, 16))),
            "squared_pred": Bool(),
            "init_from": Null(Text()),
            "init_from_heads": Choice("load", "skip"),
        }, required=("seed", "epochs", "steps_per_epoch", "batch_size", "lr", "weight_decay", "warmup_epochs",
                     "grad_clip", "precision", "val_interval", "num_workers", "accelerator", "devices",
                     "num_nodes"),
            help={"max_minutes": "hard wall-clock stop; null = none", "grad_clip": "0 or null = none",
                  "devices": "-1 = all",
                  "init_from": "start from this model's weights (bundle, .ckpt or shipped name); null = fresh",
                  "init_from_heads": "skip = output heads start fresh (out_channels may differ)"}),
        "inference": Section({
            "overlap": Num(0.0, 1.0, hi_open=True),
            "blend": Choice("gaussian", "constant"),
            "sw_batch_size": Int(1, cap=1024),
            "tta": Bool(),
            "nmf_iters": Null(Int(0, cap=1000)),
        }, help={"nmf_iters": "null = as trained"}),
    }


class _Schema(Mapping[str, Section]):
    """Section name -> :class:`Section`, built on first use: some choices come from modules that import torch and
    MONAI (the data formats, the label conventions, Lightning's precisions)."""

    @cached_property
    def _built(self) -> dict[str, Section]:
        return _sections()

    def __getitem__(self, section: str) -> Section:
        return self._built[section]

    def __iter__(self) -> Iterator[str]:
        return iter(self._built)

    def __len__(self) -> int:
        return len(self._built)


#: The types of every key of the ``data``, ``transforms``, ``train`` and ``inference`` sections.
SCHEMA: Mapping[str, Section] = _Schema()


def factorizer_keys() -> dict[str, Spec]:
    """Types of the keys a Factorizer's ``model`` section takes (besides :data:`MODEL_COMMON`)."""
    from factorseg.models import PRESETS
    from factorseg.models.layers.nmf import Init, Solver

    edge = Int(1, cap=512)
    return {
        "preset": Null(Choice(*sorted(PRESETS))),
        "crop": Null(Either(Int(1, cap=_MAX_EDGE), Seq(Int(1, cap=_MAX_EDGE), 3))),
        "pos_embed": Null(Bool()),
        "spatial_dims": Choice(3),
        "widths": Seq(Int(1, cap=2048), (1, 8)),
        "encoder_depths": Null(Seq(Int(1, cap=16), (1, 8))),
        "decoder_depths": Null(Seq(Int(1, cap=16), (0, 7))),
        "head_dim": Int(1, cap=2048),
        "window_size": Either(edge, Seq(edge, 3)),
        "shifts": Null(Seq(Either(Int(0, cap=512), Seq(Int(0, cap=512), 3)), (1, 8))),
        "rank": Int(1, cap=256),
        "nmf_iters": Int(0, cap=1000),
        "solver": Choice(*get_args(Solver)),
        "init": Null(Choice(*get_args(Init))),
        "backprop_iters": Null(Int(1, cap=1000)),
        "mlp_ratio": Num(0.0, lo_open=True, cap=64.0),
        "dropout": Num(0.0, 1.0, hi_open=True),
        "deep_supervision": Bool(),
        "ds_heads": Int(1, cap=8),
        "pos_embed_size": Null(Seq(edge, 3)),
        "stem": Choice("conv", "conv_block"),
        "down_norm": Bool(),
        "proj_bias": Bool(),
        "fuse_dropout": Bool(),
        "eps": Null(Num(0.0, 1.0, lo_open=True)),
        "checkpoint_blocks": Bool(),
        "seed": Int(0, cap=2**63 - 1),
    }


#: Types of the keys every model takes.
MODEL_COMMON: dict[str, Spec] = {
    "in_channels": Null(Int(1, cap=_MAX_CHANNELS)),
    "out_channels": Null(Int(1, cap=_MAX_CHANNELS)),
}

#: Sizes of the MONAI baselines (their other arguments are checked by their constructors).
BASELINE_SIZES: dict[str, Spec] = {
    "spatial_dims": Choice(3),
    "init_filters": Int(1, cap=1024),
    "feature_size": Int(1, cap=1024),
    "patch_size": Either(Int(1, cap=_MAX_EDGE), Seq(Int(1, cap=_MAX_EDGE), 3)),
    "img_size": Either(Int(1, cap=_MAX_EDGE), Seq(Int(1, cap=_MAX_EDGE), 3)),
    "filters": Null(Seq(Int(1, cap=4096), (1, 10))),
    "deep_supr_num": Int(1, cap=8),
    "deep_supervision": Bool(),
}


def _check_finite_tree(value: Any, key: str) -> None:
    """Numbers anywhere inside ``value`` are finite and of a sane size (arguments passed on unchecked)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{key} must be a finite number, got {shown(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**31:
        raise InputError(f"{key} is out of range, got {value}")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_finite_tree(item, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, item in value.items():
            _check_finite_tree(item, f"{key}.{k}")


def validate_model(model: Any, prefix: str = "") -> dict[str, Any]:
    """Check a ``model`` section: a registry name and arguments of the right types and sizes."""
    from factorseg.models import FACTORIZERS, PRESETS

    if not isinstance(model, Mapping):
        raise InputError(f"{prefix}model must be a mapping of settings, got {shown(model)}")
    model = dict(model)
    name = model.get("name")
    Choice(*_model_names()).check(name, f"{prefix}model.name")
    for key in model:
        if not isinstance(key, str):
            raise InputError(f"{prefix}model: setting names must be text, got {shown(key)}")
    for key, spec in MODEL_COMMON.items():
        if key in model:
            spec.check(model[key], f"{prefix}model.{key}")
    if name in FACTORIZERS:
        keys = factorizer_keys()
        unknown = sorted(set(model) - set(keys) - set(MODEL_COMMON) - {"name"})
        if unknown:
            raise InputError(f"{prefix}model.{unknown[0]} is not a setting of {name}; known: "
                             f"{', '.join(sorted(set(keys) | set(MODEL_COMMON)))}")
        for key, spec in keys.items():
            if key in model:
                spec.check(model[key], f"{prefix}model.{key}")
        effective = {**PRESETS.get(model.get("preset") or "", {}), **model}
        widths, head_dim = effective.get("widths", (32, 64, 128, 256, 512)), effective.get("head_dim", 8)
        if any(w % head_dim for w in widths):
            raise InputError(f"{prefix}model.head_dim={head_dim} must divide every width {list(widths)} "
                             "(model.widths)")
        levels = len(widths)
        if effective.get("deep_supervision") and not 1 <= effective.get("ds_heads", 3) <= max(1, levels - 1):
            raise InputError(f"{prefix}model.ds_heads must be between 1 and {max(1, levels - 1)} for "
                             f"{levels} widths, got {effective.get('ds_heads', 3)}")
    else:
        for key, value in model.items():
            if key == "name":
                continue
            if key in BASELINE_SIZES:
                BASELINE_SIZES[key].check(value, f"{prefix}model.{key}")
            else:
                _check_finite_tree(value, f"{prefix}model.{key}")
    return model


def effective_channels(model: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The model's input and output channels, a Factorizer preset's where the config does not set them."""
    from factorseg.models import FACTORIZERS, PRESETS

    preset = PRESETS.get(model.get("preset") or "", {}) if model.get("name") in FACTORIZERS else {}
    pick = lambda key: model.get(key) if model.get(key) is not None else preset.get(key)  # noqa: E731
    return pick("in_channels"), pick("out_channels")


def check_labels(labels: Any, key: str = "labels") -> Any:
    """A label convention in dict form, checked key by key; returns the :class:`LabelSpec`."""
    from factorseg.data.labels import LabelSpec

    if not isinstance(labels, Mapping):
        raise InputError(f"{key} must be a mapping (mode, names, values, ...), got {shown(labels)}")
    specs: dict[str, Spec] = {
        "mode": Choice("classes", "regions"),
        "names": Seq(Text(), (1, _MAX_CHANNELS)),
        "values": Seq(_LabelValue(), (1, 65536)),
        "regions": Seq(Seq(_LabelValue(), (1, 65536)), (0, _MAX_CHANNELS)),
        "fill": Seq(_LabelValue(), (0, _MAX_CHANNELS)),
        "convention": Text(),
    }
    unknown = sorted(str(k) for k in labels if k not in specs)
    if unknown:
        raise InputError(f"{key}.{unknown[0]} is not a label setting; known: {', '.join(specs)}")
    for name in ("mode", "names", "values"):
        if name not in labels:
            raise InputError(f"{key} lacks '{name}'")
    for name, spec in specs.items():
        if name in labels:
            spec.check(labels[name], f"{key}.{name}")
    try:
        return LabelSpec.from_dict(labels)
    except InputError as exc:
        raise InputError(f"{key}: {exc}") from None
    except (TypeError, ValueError) as exc:  # pragma: no cover - the checks above leave none
        raise InputError(f"{key}: invalid label convention ({exc})") from None


class _LabelValue(Int):
    def __init__(self) -> None:
        super().__init__(-(2**31), 2**31 - 1)

    @property
    def desc(self) -> str:  # type: ignore[override]
        return "an integer label value"


def validate_section(section: str, values: Any, prefix: str = "", require: bool = False) -> dict[str, Any]:
    """Check one of the ``data``, ``transforms``, ``train`` and ``inference`` sections (unknown keys refused)."""
    spec = SCHEMA[section]
    if not isinstance(values, Mapping):
        raise InputError(f"{prefix}{section} must be a mapping of settings, got {shown(values)}")
    unknown = sorted(str(k) for k in values if k not in spec.keys)
    if unknown:
        raise InputError(f"{prefix}{section}.{unknown[0]} is not a {section} setting; known: {', '.join(spec.keys)}")
    if require:
        missing = [k for k in spec.required if k not in values]
        if missing:
            raise InputError(f"{prefix}{section}.{missing[0]} is not set; a recipe of your own should start "
                             "with `base: default` to inherit the defaults")
    for key, value in values.items():
        spec.keys[key].check(value, f"{prefix}{section}.{key}")
    if spec.extra is not None:
        spec.extra(dict(values), prefix)
    if section == "transforms":
        _transform_config(values, prefix)
    return dict(values)


def _transform_config(values: Mapping[str, Any], prefix: str) -> Any:
    """The :class:`TransformConfig` of checked values (its own checks, e.g. orientation codes, in one line)."""
    from factorseg.data.transforms import TransformConfig

    try:
        return TransformConfig.from_dict(dict(values))
    except InputError as exc:
        raise InputError(f"{prefix}transforms: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{prefix}transforms: {exc}") from None


def validate_recipe(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Check a whole recipe (every section, every key, their types and ranges); returns a copy.

    Raises :class:`InputError` naming the first bad key; called where a recipe enters (``train``, the demo).
    """
    if not isinstance(cfg, Mapping):
        raise InputError(f"{prefix}a recipe must be a mapping of sections, got {shown(cfg)}")
    unknown = sorted(str(k) for k in cfg if k not in SECTIONS)
    if unknown:
        raise InputError(f"{prefix}unknown recipe section(s) {unknown}; known: {list(SECTIONS)}")
    out = copy.deepcopy({k: dict(v) if isinstance(v, Mapping) else v for k, v in cfg.items()})
    for section in SECTIONS:
        out.setdefault(section, {})
    out["model"] = validate_model(out["model"], prefix)
    for section in ("data", "transforms", "train", "inference"):
        out[section] = validate_section(section, out[section], prefix, require=True)
    return {section: out[section] for section in SECTIONS}


def validate_bundle_config(config: Any, where: str) -> dict[str, Any]:
    """Check a trained model's config (bundle, Lightning checkpoint or export sidecar) in full.

    Every section and value is checked with the recipe types; the model must take as many input channels
    as the bundle names and give as many outputs as its label convention has.
    """
    prefix = f"{where}: "
    if not isinstance(config, Mapping):
        raise InputError(f"{prefix}not a factorseg model config")
    missing = [k for k in ("model", "labels", "transforms", "channels", "inference") if k not in config]
    if missing:
        raise InputError(f"{prefix}not a factorseg model bundle (its config lacks {', '.join(missing)})")
    model = validate_model(config["model"], prefix)
    labels = check_labels(config["labels"], f"{prefix}labels")
    channels = config["channels"]
    if not isinstance(channels, list | tuple) or not 1 <= len(channels) <= _MAX_CHANNELS or not all(
        isinstance(c, str) and c for c in channels
    ):
        raise InputError(f"{prefix}channels must be a list of channel names, got {shown(channels)}")
    validate_section("transforms", config["transforms"], prefix)
    validate_section("inference", config["inference"], prefix)
    in_ch, out_ch = effective_channels(model)
    if in_ch is None or out_ch is None:
        raise InputError(f"{prefix}model.{'in_channels' if in_ch is None else 'out_channels'} is not set")
    if in_ch != len(channels):
        raise InputError(f"{prefix}model takes {in_ch} input channels but lists {len(channels)} channel names "
                         f"({', '.join(channels)})")
    if out_ch != labels.num_outputs:
        raise InputError(f"{prefix}model.out_channels={out_ch} but its label convention ({labels.convention}, "
                         f"{labels.mode}) has {labels.num_outputs} outputs ({', '.join(labels.names)})")
    return dict(config)


def describe_keys() -> dict[str, list[tuple[str, str]]]:
    """Per section: (key, type and range) of every key ``-s section.key=value`` accepts."""
    out: dict[str, list[tuple[str, str]]] = {}
    model = [("name", Choice(*_model_names()).desc), *((k, s.desc) for k, s in MODEL_COMMON.items())]
    model += [(k, f"{s.desc} (Factorizers)") for k, s in factorizer_keys().items()]
    model += [(k, f"{s.desc} (MONAI baselines)") for k, s in BASELINE_SIZES.items() if k != "deep_supervision"]
    out["model"] = model
    for section, spec in SCHEMA.items():
        out[section] = [(k, s.desc + (f"; {spec.help[k]}" if k in spec.help else "")) for k, s in spec.keys.items()]
    return out


__all__ = [
    "BASELINE_SIZES", "MODEL_COMMON", "SCHEMA", "SECTIONS", "Bool", "Choice", "Either", "Int", "LabelDict", "Null",
    "Num", "Section", "Seq", "Spec", "Text", "check_labels", "describe_keys", "effective_channels", "factorizer_keys",
    "validate_bundle_config", "validate_model", "validate_recipe", "validate_section",
]
