"""nnU-Net v2 trainers that train factorseg's Swin Factorizer on nnU-Net's plans (needs ``factorseg[nnunet]``).

``nnUNetTrainerFactorizer`` keeps everything of nnU-Net's ``nnUNetTrainer`` (data, augmentation,
loss, deep supervision, SGD with the poly schedule, validation, inference) and replaces only the
network. Variants change one thing each; see docs/nnunet.md.
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo import OptimizedModule

from factorseg.nnunet.plans import NNUNetFactorizer, check_strides, factorizer_kwargs
from factorseg.training.module import adamw

__all__ = [
    "nnUNetTrainerFactorizer",
    "nnUNetTrainerFactorizer_100epochs",
    "nnUNetTrainerFactorizer_10epochs",
    "nnUNetTrainerFactorizer_5epochs",
    "nnUNetTrainerFactorizer_AdamW",
    "nnUNetTrainerFactorizer_AdamW_100epochs",
    "nnUNetTrainerFactorizer_AdamW_10epochs",
    "nnUNetTrainerFactorizer_debug",
    "nnUNetTrainerFactorizer_iters3",
    "nnUNetTrainerFactorizer_rank2",
]


class nnUNetTrainerFactorizer(nnUNetTrainer):
    """nnU-Net's trainer with the Swin Factorizer (the paper's network) built from the plans.

    From the plans: patch size (and the positional embedding sized for it), one stage per nnU-Net stage,
    widths = ``features_per_stage`` (rounded up to multiples of the head size 8), input and output
    channels, one deep-supervision head per output nnU-Net's loss expects. Plans whose strides are not
    ``[1, 1, 1]`` then ``[2, 2, 2]`` are refused when the trainer is made. ``torch.compile`` is off
    unless ``nnUNet_compile`` asks for it (not tested with the Factorizer).
    """

    #: ``factorseg.models.create`` name and keyword overrides of the network (variants change these).
    factorizer_name: ClassVar[str] = "swin_factorizer"
    factorizer_overrides: ClassVar[dict[str, Any]] = {}
    #: Epochs of nnU-Net's 250 iterations; ``None`` keeps nnU-Net's 1,000 (shorter schedules set it).
    epochs: ClassVar[int | None] = None

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.epochs is not None:
            self.num_epochs = self.epochs
        # refuse unusable plans before any data is read
        check_strides(self.configuration_manager.pool_op_kernel_sizes, len(self.configuration_manager.patch_size))

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        """The network of this trainer for ``configuration_manager``'s plans (training and inference alike).

        A class method (nnU-Net calls it on the class at inference and on the instance in training, with
        the same arguments), so that variants only change :attr:`factorizer_overrides`.
        """
        from factorseg.models import create

        overrides = dict(cls.factorizer_overrides)
        kwargs = factorizer_kwargs(
            patch_size=configuration_manager.patch_size,
            strides=configuration_manager.pool_op_kernel_sizes,
            in_channels=num_input_channels,
            out_channels=num_output_channels,
            features_per_stage=configuration_manager.network_arch_init_kwargs.get("features_per_stage"),
            head_dim=overrides.get("head_dim", 8),
        )
        kwargs.update(overrides)
        return NNUNetFactorizer(create(cls.factorizer_name, **kwargs), deep_supervision=bool(enable_deep_supervision))

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        mod = self.network.module if self.is_ddp else self.network
        if isinstance(mod, OptimizedModule):
            mod = mod._orig_mod
        mod.deep_supervision = enabled

    def _do_i_compile(self) -> bool:
        return os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t") and super()._do_i_compile()


class nnUNetTrainerFactorizer_iters3(nnUNetTrainerFactorizer):
    """3 NMF (HALS) iterations per block instead of the paper's 5: cheaper, slightly coarser factors."""

    factorizer_overrides = {"nmf_iters": 3}


class nnUNetTrainerFactorizer_rank2(nnUNetTrainerFactorizer):
    """NMF rank 2 instead of the paper's 1."""

    factorizer_overrides = {"rank": 2}


class WarmupCosineLR:
    """Per-epoch learning rate: linear warm-up to ``initial_lr`` over ``warmup`` epochs, then cosine to 0.

    Follows nnU-Net's scheduler protocol: ``step(epoch)`` sets the rate of that epoch.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, warmup: int, max_steps: int) -> None:
        self.optimizer, self.initial_lr = optimizer, initial_lr
        self.warmup, self.max_steps = max(0, warmup), max(1, max_steps)
        self.ctr = 0
        self.step(0)

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.initial_lr * (step + 1) / (self.warmup + 1)
        span = max(1, self.max_steps - self.warmup)
        return 0.5 * self.initial_lr * (1 + math.cos(math.pi * min(1.0, (step - self.warmup) / span)))

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            current_step, self.ctr = self.ctr, self.ctr + 1
        lr = self.lr_at(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)

    def get_last_lr(self) -> list[float]:
        return self._last_lr


class nnUNetTrainerFactorizer_AdamW(nnUNetTrainerFactorizer):
    """AdamW instead of nnU-Net's SGD: lr 2e-3, weight decay 0.01, linear warm-up, then cosine to 0.

    The optimiser the Factorizer was made with (the paper: AdamW with warm-up and cosine decay) at
    factorseg's hippocampus-recipe rate; nnU-Net's SGD (lr 0.01, Nesterov momentum 0.99, poly decay) was
    tuned for its convolutional U-Nets and trains the Factorizer far more slowly (docs/nnunet.md). The
    warm-up is 2,000 iterations counted in nnU-Net epochs, at most a tenth of the schedule.
    """

    adamw_lr: ClassVar[float] = 2e-3
    weight_decay_adamw: ClassVar[float] = 1e-2
    warmup_iterations: ClassVar[int] = 2000

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.adamw_lr
        self.weight_decay = self.weight_decay_adamw

    def configure_optimizers(self):
        optimizer = adamw(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        warmup = min(math.ceil(self.warmup_iterations / self.num_iterations_per_epoch), self.num_epochs // 10)
        return optimizer, WarmupCosineLR(optimizer, self.initial_lr, warmup, self.num_epochs)


class nnUNetTrainerFactorizer_100epochs(nnUNetTrainerFactorizer):
    """100 epochs instead of 1,000, to compare with nnU-Net's ``nnUNetTrainer_100epochs`` on the same plans."""

    epochs = 100


class nnUNetTrainerFactorizer_10epochs(nnUNetTrainerFactorizer):
    """10 epochs (2,500 iterations), to compare with nnU-Net's ``nnUNetTrainer_10epochs`` on a CPU budget."""

    epochs = 10


class nnUNetTrainerFactorizer_5epochs(nnUNetTrainerFactorizer):
    """5 epochs (1,250 iterations), to compare with nnU-Net's ``nnUNetTrainer_5epochs`` on a CPU budget."""

    epochs = 5


class nnUNetTrainerFactorizer_AdamW_100epochs(nnUNetTrainerFactorizer_AdamW):
    """:class:`nnUNetTrainerFactorizer_AdamW` for 100 epochs (compare with ``nnUNetTrainer_100epochs``)."""

    epochs = 100


class nnUNetTrainerFactorizer_AdamW_10epochs(nnUNetTrainerFactorizer_AdamW):
    """:class:`nnUNetTrainerFactorizer_AdamW` for 10 epochs (compare with ``nnUNetTrainer_10epochs``)."""

    epochs = 10


class nnUNetTrainerFactorizer_debug(nnUNetTrainerFactorizer):
    """One epoch of 2 training and 1 validation iterations: checks the whole chain in seconds (tests)."""

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1
        if self.device.type == "cpu" and hasattr(os, "sched_getaffinity"):
            # nnUNetv2_train -device cpu asks for a thread per core of the machine, not of this process
            torch.set_num_threads(max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0)))))
