"""The Lightning module: loss with deep supervision, AdamW with warm-up + cosine, sliding-window validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.metrics import DiceMetric
from monai.utils import convert_to_tensor
from torch import Tensor

from factorseg.models.bundle import build_model
from factorseg.data.labels import LabelSpec
from factorseg.training.data import derive_seed


def _plain(x: Any) -> Tensor:
    """A batch entry as a plain tensor: MetaTensor metadata tracking is overhead in the network and the loss."""
    return convert_to_tensor(x, track_meta=False)


def make_loss(labels: LabelSpec, ds_weights: list[float] | None, squared_pred: bool = False) -> torch.nn.Module:
    """Dice + cross-entropy (softmax classes) or Dice + binary cross-entropy (sigmoid regions, every channel).

    ``squared_pred`` squares the predictions in the Dice denominator (the paper's BraTS and ISLES'22 loss).
    """
    common = dict(smooth_nr=1e-5, smooth_dr=1e-5, squared_pred=squared_pred)
    if labels.mode == "regions":
        base = DiceCELoss(sigmoid=True, include_background=True, **common)
    else:
        base = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, **common)
    return DeepSupervisionLoss(base, weight_mode="exp", weights=ds_weights)


def discretize(logits: Tensor, labels: LabelSpec) -> Tensor:
    """One-hot decisions ``(B, C, ...)``: thresholded sigmoids for regions, argmax for classes."""
    if labels.mode == "regions":
        return (torch.sigmoid(logits) > 0.5).float()
    index = logits.argmax(dim=1, keepdim=True)
    return torch.zeros_like(logits).scatter_(1, index, 1.0)


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

    def add(self, pred: Tensor, target: Tensor, mode: str) -> None:
        """One batch of discretised predictions and one-hot / region targets ``(B, C, *spatial)``."""
        first = 0 if mode == "regions" else 1  # classes: channel 0 is the background
        self.cases += int(pred.shape[0])
        self.predicted += int((pred[:, first:] > 0.5).any(dim=1).sum())
        counts = (target[:, first:] > 0.5).flatten(2).sum(dim=(0, 2)).tolist()
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
        train = config["train"]
        self.loss = make_loss(self.labels, train.get("deep_supervision_weights"), train.get("squared_pred", False))
        self.dice = DiceMetric(include_background=self.labels.mode == "regions", reduction="mean_batch")
        self.val_stats = ValidationStats()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def on_train_epoch_start(self) -> None:
        # Dropout and any in-model randomness: a pure function of (seed, epoch, rank), so resuming is exact.
        torch.manual_seed(derive_seed(self.config["train"]["seed"], self.current_epoch, self.global_rank, 1))

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
        inf = self.config["inference"]
        logits = sliding_window_inference(
            image, self.config["transforms"]["roi_size"], inf.get("sw_batch_size", 1), self.model,
            overlap=inf.get("overlap", 0.5), mode=inf.get("blend", "gaussian"),
        )
        pred = discretize(logits, self.labels)
        if self.labels.mode == "classes":
            target = torch.zeros_like(pred).scatter_(1, target.long(), 1.0)
        self.val_stats.add(pred, target, self.labels.mode)
        self.dice(pred, target)

    def on_validation_epoch_start(self) -> None:
        self.val_stats = ValidationStats()

    def on_validation_epoch_end(self) -> None:
        per_structure = self.dice.aggregate()
        self.dice.reset()
        names = self.labels.names if self.labels.mode == "regions" else self.labels.names[1:]
        for name, value in zip(names, per_structure):
            self.log(f"val/dice_{name}", value, sync_dist=True)
        self.log("val/dice", per_structure.nanmean(), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        train = self.config["train"]
        optimizer = torch.optim.AdamW(self.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
        steps = train["steps_per_epoch"]
        warmup, total = max(1, int(train["warmup_epochs"] * steps)), train["epochs"] * steps
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
