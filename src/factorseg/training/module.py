"""The Lightning module: loss with deep supervision, AdamW with warm-up + cosine, sliding-window validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import convert_to_tensor
from torch import Tensor

from factorseg.config import InferenceConfig, TrainConfig
from factorseg.bundles.format import build_model
from factorseg.data.labels import LabelSpec
from factorseg.evaluation.metrics import dice_from_counts
from factorseg.training.data import derive_seed


def _plain(x: Any) -> Tensor:
    """A batch entry as a plain tensor: MetaTensor metadata tracking is overhead in the network and the loss."""
    return convert_to_tensor(x, track_meta=False)


def make_loss(labels: LabelSpec, ds_weights: list[float] | None, squared_pred: bool = False) -> torch.nn.Module:
    """MONAI's Dice + cross-entropy with the flags of ``labels`` (:attr:`LabelSpec.loss_options`), deep-supervised.

    ``squared_pred`` squares the predictions in the Dice denominator (the paper's BraTS and ISLES'22 loss).
    """
    base = DiceCELoss(smooth_nr=1e-5, smooth_dr=1e-5, squared_pred=squared_pred, **labels.loss_options)
    return DeepSupervisionLoss(base, weight_mode="exp", weights=ds_weights)


class ValidationDice(CumulativeIterationMetric):
    """Per-case Dice of each scored structure, scored as ``factorseg evaluate`` scores it (an empty reference
    gives 1 with an empty prediction and 0 otherwise, through :func:`dice_from_counts`), so that the model kept
    as ``model_best.pt`` is the best by the evaluation's own rule; cases are gathered across processes."""

    def _compute_tensor(self, y_pred: Tensor, y: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Dice ``(B, S)`` of boolean decisions ``y_pred`` against boolean references ``y``, ``(B, S, *spatial)``."""
        assert y is not None
        counts = [m.flatten(2).sum(-1).tolist() for m in (y_pred & y, y_pred, y)]
        scores = [[dice_from_counts(*c) for c in zip(*case)] for case in zip(*counts)]
        return torch.tensor(scores, dtype=torch.float32, device=y_pred.device)

    def aggregate(self) -> Tensor:
        """Mean Dice of each structure ``(S,)`` over the cases seen since the last reset."""
        return do_metric_reduction(self.get_buffer(), "mean_batch")[0]


def adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, one fused kernel per step where PyTorch has it for every parameter (floating point, on the CPU or
    a CUDA device); elsewhere PyTorch's default. The same update up to rounding: on the CPU the default is a
    loop of a dozen small operations per parameter tensor, which for the hippocampus recipe's SegResNet (83
    tensors, 4.7 M values) took 8.5-13.8 ms a step against 1.9 fused, and 2.0 against 0.4 for its Factorizer (two
    threads, two runs: ``benchmarks/results/session34/adamw.py``, ``adamw_2threads.txt``)."""
    params = list(params)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if fused else None)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class ValidationStats:
    """Foreground voxel counts of one validation pass (this process's cases), for the end-of-training hint
    when the validation Dice is 0 or undefined: ``predicted``: voxels of any foreground output;
    ``reference``: voxels per structure (region or class, background excluded) in the validation labels."""

    cases: int = 0
    predicted: int = 0
    reference: list[int] = field(default_factory=list)

    def add(self, pred: Tensor, target: Tensor) -> None:
        """One batch of boolean decisions and references per scored structure ``(B, S, *spatial)``."""
        self.cases += int(pred.shape[0])
        self.predicted += int(pred.any(dim=1).sum())
        counts = target.flatten(2).sum(dim=(0, 2)).tolist()
        self.reference = [a + int(b) for a, b in zip(self.reference, counts)] if self.reference else [
            int(b) for b in counts]


class SegmentationModule(pl.LightningModule):
    """Trains any registry model on one label convention; ``config`` is the resolved recipe (plain data)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config = config
        self.labels = LabelSpec.from_dict(config["labels"])
        self.model = build_model(config["model"])
        self.train_cfg = TrainConfig.from_dict(config["train"])
        self.inference_cfg = InferenceConfig.from_dict(config["inference"])
        self.loss = make_loss(self.labels, self.train_cfg.deep_supervision_weights, self.train_cfg.squared_pred)
        self.dice = ValidationDice()
        self.val_stats = ValidationStats()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def on_train_epoch_start(self) -> None:
        # Dropout and any in-model randomness: a pure function of (seed, epoch, rank), so resuming is exact.
        torch.manual_seed(derive_seed(self.train_cfg.seed, self.current_epoch, self.global_rank, 1))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        image, target = _plain(batch["image"]), _plain(batch["label"])
        # Float targets: deep supervision resizes them (nearest), which integer tensors do not support.
        output = self.model(image)
        if isinstance(output, Tensor) and output.dim() == image.dim() + 1:
            output = list(output.unbind(1))  # MONAI DynUNet stacks its deep-supervision heads
        loss = self.loss(output, target.float())
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=image.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        image, target = _plain(batch["image"]), _plain(batch["label"])
        inf = self.inference_cfg
        logits = sliding_window_inference(
            image, self.config["transforms"]["roi_size"], inf.sw_batch_size, self.model, overlap=inf.overlap,
            mode=inf.blend,
        )
        pred, target = self.labels.structure_masks(logits), self.labels.target_masks(target)
        self.val_stats.add(pred, target)
        self.dice(pred, target)

    def on_validation_epoch_start(self) -> None:
        self.val_stats = ValidationStats()

    def on_validation_epoch_end(self) -> None:
        per_structure = self.dice.aggregate()
        self.dice.reset()
        for name, value in zip(self.labels.structure_names, per_structure):
            self.log(f"val/dice_{name}", value, sync_dist=True)
        self.log("val/dice", per_structure.nanmean(), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        train = self.train_cfg
        optimizer = adamw(self.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        steps = train.steps_per_epoch
        warmup, total = max(1, int(train.warmup_epochs * steps)), train.epochs * steps
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
