"""Typed views of the ``data``, ``train`` and ``inference`` sections: the one home of their defaults.

Recipes, resolved run configs and bundle configs stay plain dicts (a file format: YAML, or plain data inside a
``.pt`` file); code reads a section through its view, e.g. ``InferenceConfig.from_dict(cfg["inference"]).overlap``,
rather than looking keys up with a default of its own. A field's default is the one default of that setting
(``default.yaml`` spells the same values out for users; a test keeps the two equal). A view checks its values with
the types of :data:`~factorseg.config.schema.SCHEMA` when it is made (one-line :class:`~factorseg.errors.InputError`).
The view of ``transforms`` is :class:`factorseg.data.transforms.TransformConfig` (it needs torch and MONAI).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Self

from factorseg.config.schema import validate_section
from factorseg.errors import InputError


@dataclass(frozen=True)
class _View:
    """A frozen, checked view of the config section named :attr:`section`."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        validate_section(self.section, self.to_dict())

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], prefix: str = "") -> Self:
        """The view of a plain section: keys it lacks take their defaults; unknown keys and bad values are refused
        with a message that starts with ``prefix`` (e.g. a bundle's path)."""
        checked = validate_section(cls.section, values, prefix)
        try:
            return cls(**checked)
        except InputError as exc:  # a check across keys, some of them defaults (e.g. data.fold against folds)
            raise InputError(f"{prefix}{exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The section as plain data, every key."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class DataConfig(_View):
    """Which dataset is read and how it is split.

    Attributes:
        format: dataset layout (``msd``, ``nnunet``, ...); None: detected.
        labels: label convention (a registered name or its dict form); None: the dataset's.
        use_flair: ISLES'22: add FLAIR (resampled onto the DWI grid) as a third channel.
        folds, fold: cross-validation folds and the one held out for validation (``"all"``: none, train on all).
        splits_file: where the folds are kept; None: ``<output>/splits.json``.
        cache: keep the preprocessed volumes in memory.
    """

    section: ClassVar[str] = "data"

    format: str | None = None
    labels: str | Mapping[str, Any] | None = None
    use_flair: bool = False
    folds: int = 5
    fold: int | Literal["all"] = 0
    splits_file: str | None = None
    cache: bool = True


@dataclass(frozen=True)
class TrainConfig(_View):
    """How a model is trained.

    Attributes:
        seed: seeds the splits, the sampler, the augmentations and dropout.
        epochs, steps_per_epoch, batch_size: the schedule (``epochs * steps_per_epoch`` optimizer steps).
        max_minutes: hard wall-clock stop (the schedule still assumes ``epochs``); None: none.
        lr, weight_decay, warmup_epochs: AdamW with linear warm-up, then cosine decay.
        grad_clip: gradient-norm clip; 0 or None: none.
        precision: Lightning precision; ``auto``: bf16-mixed where the GPU supports it, else 32-true.
        val_interval: epochs between sliding-window validations.
        num_workers: data-loading processes.
        accelerator, devices, num_nodes: where it runs (more than one device or node: DDP; ``devices=-1``: all).
        deep_supervision_weights: loss weight per output level; None: halving per level (nnU-Net).
        squared_pred: squared predictions in the Dice denominator (the paper's BraTS / ISLES'22 loss).
        init_from: start from this model's weights (bundle, ``.ckpt`` or shipped name); None: fresh.
        init_from_heads: ``skip``: the output heads start fresh (``out_channels`` may differ).
    """

    section: ClassVar[str] = "train"

    seed: int = 0
    epochs: int = 100
    max_minutes: float | None = None
    steps_per_epoch: int = 250
    batch_size: int = 2
    lr: float = 0.001
    weight_decay: float = 0.01
    warmup_epochs: float = 2.0
    grad_clip: float | None = 1.0
    precision: str | int = "auto"
    val_interval: int = 5
    num_workers: int = 2
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    deep_supervision_weights: list[float] | None = None
    squared_pred: bool = False
    init_from: str | None = None
    init_from_heads: Literal["load", "skip"] = "load"


@dataclass(frozen=True)
class InferenceConfig(_View):
    """How a model predicts a scan (and validates during training).

    Attributes:
        overlap: sliding-window overlap in [0, 1).
        blend: how overlapping windows are combined, ``gaussian`` or ``constant``.
        sw_batch_size: windows per forward pass.
        tta: average over all axis flips.
        nmf_iters: NMF iterations at test time; None: as trained.
    """

    section: ClassVar[str] = "inference"

    overlap: float = 0.5
    blend: Literal["gaussian", "constant"] = "gaussian"
    sw_batch_size: int = 2
    tta: bool = False
    nmf_iters: int | None = None


__all__ = ["DataConfig", "InferenceConfig", "TrainConfig"]
