"""``train``: resolve a recipe against a dataset and fit with Lightning (checkpoints, logs, resume, DDP)."""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from monai.data import list_data_collate
from rich.progress import track
from torch.utils.data import DataLoader

from factorseg import models
from factorseg.bundle import save_bundle
from factorseg.config import SECTIONS, save_config
from factorseg.data.formats import DatasetInfo, load_dataset
from factorseg.data.labels import get_label_spec
from factorseg.data.splits import load_or_create_splits, make_splits
from factorseg.data.transforms import LoadCased, TransformConfig, train_transforms, val_transforms
from factorseg.errors import InputError
from factorseg.inference import InferenceOptions
from factorseg.io import atomic_path, atomic_write
from factorseg.training.data import CaseDataset, EpochSampler
from factorseg.training.module import SegmentationModule


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed: a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, overwrite=True) as tmp:
            torch.save(checkpoint, tmp)


class BundleWriter(Callback):
    """Keeps ``model_last.pt`` (every epoch) and ``model_best.pt`` (best validation Dice) up to date."""

    def __init__(self, out_dir: Path, config: dict[str, Any]) -> None:
        self.out_dir, self.config, self.best = out_dir, config, -1.0

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            save_bundle(self.config, module.model, self.out_dir / "model_last.pt")

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Not on_validation_epoch_end: callbacks run that hook before the module logs val/dice, so the score
        # seen there would be the previous validation's.
        score = trainer.callback_metrics.get("val/dice")
        if trainer.sanity_checking or score is None or not trainer.is_global_zero:
            return
        if float(score) > self.best:
            self.best = float(score)
            save_bundle(self.config, module.model, self.out_dir / "model_best.pt")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state.get("best", -1.0))


@dataclass
class TrainResult:
    """Where a run left its outputs and its final validation scores."""

    out_dir: Path
    best_model: Path
    last_model: Path
    metrics: dict[str, float]


def resolve_config(cfg: dict[str, Any], info: DatasetInfo) -> dict[str, Any]:
    """Fill in what the dataset decides (channels, labels, in/out channels) and check consistency."""
    cfg = {k: dict(v) for k, v in cfg.items()}
    labels = info.labels
    cfg["labels"] = labels.to_dict()
    cfg["channels"] = list(info.channels)
    model = cfg["model"] = models.explicit_architecture(cfg["model"])
    for key, value in (("in_channels", len(info.channels)), ("out_channels", labels.num_outputs)):
        if model.get(key) is None:
            model[key] = value
        elif model[key] != value:
            raise InputError(f"recipe sets model.{key}={model[key]} but the dataset needs {value}")
    tcfg = TransformConfig.from_dict(cfg["transforms"])
    cfg["transforms"] = tcfg.to_dict()
    if model["name"] in models.FACTORIZERS and "pos_embed_size" not in model:
        model["crop"] = list(tcfg.roi_size)  # a positional embedding is sized for the training patch
    _check_train_settings(cfg["train"])
    InferenceOptions().resolved(cfg["inference"])  # the bundles carry these: refuse bad ones before training
    return cfg


def _check_train_settings(train: dict[str, Any]) -> None:
    """One-line errors for settings that would otherwise fail deep inside Lightning or the optimizer."""

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    for key in ("epochs", "steps_per_epoch", "batch_size", "val_interval"):
        value = train.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool)) or value < 1:
            raise InputError(f"train.{key} must be an integer >= 1, got {value!r}")
    if not isinstance(train.get("num_workers"), int) or train["num_workers"] < 0:
        raise InputError(f"train.num_workers must be an integer >= 0, got {train.get('num_workers')!r}")
    if not number(train.get("lr")) or train["lr"] <= 0:
        raise InputError(f"train.lr must be a positive number, got {train.get('lr')!r}")
    for key in ("weight_decay", "warmup_epochs", "grad_clip"):
        value = train.get(key)
        if value is not None and (not number(value) or value < 0):
            raise InputError(f"train.{key} must be a number >= 0, got {value!r}")
    if not isinstance(train.get("squared_pred", False), bool):
        raise InputError(f"train.squared_pred must be true or false, got {train['squared_pred']!r}")


def _precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _strategy(train: dict[str, Any]) -> str:
    devices, nodes = train["devices"], train["num_nodes"]
    multi = nodes > 1 or (isinstance(devices, int) and devices > 1) or devices == -1 or "WORLD_SIZE" in os.environ
    return "ddp" if multi else "auto"


def _write_run_info(out_dir: Path, trainer: pl.Trainer, seconds: float, metrics: dict[str, float]) -> None:
    """Hardware, parallelism and wall time of the run, kept beside its results (``run_info.json``)."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine()
    info = {
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "precision": str(trainer.precision),
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "wall_seconds_this_session": round(seconds, 1),
        "device": device,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "metrics": metrics,
    }
    atomic_write(out_dir / "run_info.json", json.dumps(info, indent=2).encode(), overwrite=True)


def _trainer(tr: dict[str, Any], callbacks: list[Callback], out_dir: Path, progress: bool) -> pl.Trainer:
    """The Lightning trainer for the ``train`` settings (creates no files by itself)."""
    return pl.Trainer(
        max_epochs=tr["epochs"],
        max_time={"minutes": float(tr["max_minutes"])} if tr.get("max_minutes") else None,
        accelerator=tr["accelerator"],
        devices=tr["devices"],
        num_nodes=tr["num_nodes"],
        strategy=_strategy(tr),
        precision=_precision(tr["precision"]),
        gradient_clip_val=tr["grad_clip"] or None,
        check_val_every_n_epoch=tr["val_interval"],
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=[CSVLogger(out_dir, name="logs", version=""), TensorBoardLogger(out_dir, name="tensorboard", version="")],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=min(10, tr["steps_per_epoch"]),
        default_root_dir=out_dir,
    )


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporary files that a killed run left behind mid-write (``atomic_path``'s ``.tmp-*`` names)."""
    for folder in (out_dir, out_dir / "checkpoints"):
        for tmp in folder.glob(".tmp-*"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)


def train(
    cfg: dict[str, Any],
    data_path: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train on the dataset at ``data_path`` with the resolved recipe ``cfg``; outputs go to ``out_dir``.

    ``resume`` continues from ``out_dir/checkpoints/last.ckpt`` (model, optimizer, schedule, epoch).
    """
    out_dir = Path(out_dir)
    data_cfg = cfg["data"]
    info = load_dataset(data_path, data_cfg.get("format"), labels=data_cfg.get("labels"),
                        use_flair=bool(data_cfg.get("use_flair", False)))
    if not info.cases:
        raise InputError(f"{data_path}: no labelled training cases found")
    cfg = resolve_config(cfg, info)
    last_ckpt = out_dir / "checkpoints" / "last.ckpt"
    if resume and not last_ckpt.exists():
        raise InputError(f"--resume: {last_ckpt} does not exist")
    if not resume and last_ckpt.exists():
        raise InputError(f"{out_dir} already holds a run; use --resume to continue it or choose another --output")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    if resume:
        _remove_stale_temporaries(out_dir)
    started = time.perf_counter()
    data, tr = cfg["data"], cfg["train"]
    pl.seed_everything(tr["seed"], workers=True, verbose=False)

    splits_file = Path(data.get("splits_file") or out_dir / "splits.json")
    if splits_file.exists():
        splits = load_or_create_splits(splits_file, info.case_ids, data["folds"], tr["seed"])
    else:  # written once the data have passed the checks below
        splits = make_splits(info.case_ids, data["folds"], tr["seed"])
    fold = data["fold"]
    if not 0 <= fold < len(splits):
        raise InputError(f"data.fold={fold} but there are {len(splits)} folds")
    by_id = {c["id"]: c for c in info.cases}
    train_cases = [by_id[i] for i in splits[fold]["train"]]
    val_cases = [by_id[i] for i in splits[fold]["val"]]

    # Every case is read and checked (files, grids, label values) before anything is written, so that a bad
    # file stops the run with one line up front instead of mid-training: caching does it while loading.
    labels = get_label_spec(cfg["labels"])
    tcfg = TransformConfig.from_dict(cfg["transforms"])
    cache = bool(data.get("cache", True))
    train_set = CaseDataset(train_cases, train_transforms(tcfg, labels), cache, "Caching training cases", progress)
    val_set = CaseDataset(val_cases, val_transforms(tcfg, labels), cache, "Caching validation cases", progress)
    if not cache:
        check = LoadCased(labels=labels)
        for case in track(train_cases + val_cases, description="Checking cases", transient=True, disable=not progress):
            check(case)

    workers = tr["num_workers"]
    sampler = EpochSampler(len(train_set), tr["steps_per_epoch"] * tr["batch_size"], tr["seed"])
    train_loader = DataLoader(
        train_set, batch_size=tr["batch_size"], sampler=sampler, num_workers=workers,
        collate_fn=list_data_collate, persistent_workers=False,
    )
    val_loader = DataLoader(val_set, batch_size=1, num_workers=0, collate_fn=list_data_collate)

    module = SegmentationModule(cfg)
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor="val/dice", mode="max",
                        save_top_k=1, enable_version_counter=False),
        # last.ckpt after every epoch, validated or not (a single monitored callback would only save on
        # validation epochs), so that a killed run loses at most one epoch.
        ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="last", save_top_k=1,
                        save_on_train_epoch_end=True, enable_version_counter=False),
        BundleWriter(out_dir, cfg),
    ]
    if progress:
        callbacks.append(RichProgressBar())
    try:
        trainer = _trainer(tr, callbacks, out_dir, progress)
    except MisconfigurationException as exc:  # e.g. --accelerator gpu on a machine without one
        raise InputError(f"training settings: {str(exc).strip().splitlines()[0]}") from exc

    # Nothing is written before this point: a refused run leaves no folder behind.
    out_dir.mkdir(parents=True, exist_ok=True)
    if not splits_file.exists():
        load_or_create_splits(splits_file, info.case_ids, data["folds"], tr["seed"])
    # Only the recipe sections: config.yaml is then a valid recipe, reloaded by --resume (labels and channels
    # are derived from the dataset again, and travel in the model bundles).
    save_config({key: cfg[key] for key in SECTIONS}, out_dir / "config.yaml")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*The number of training batches.*")
        warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
        trainer.fit(module, train_loader, val_loader, ckpt_path=last_ckpt if resume else None, weights_only=True)
    if trainer.current_epoch % tr["val_interval"] != 0:
        # The last epochs were not validated: score the final weights too (may become the best model).
        trainer.validate(module, val_loader, verbose=False)
    if trainer.is_global_zero and not (out_dir / "model_best.pt").exists():
        save_bundle(cfg, module.model, out_dir / "model_best.pt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if trainer.is_global_zero:
        _write_run_info(out_dir, trainer, time.perf_counter() - started, metrics)
    return TrainResult(out_dir, out_dir / "model_best.pt", out_dir / "model_last.pt", metrics)
