"""``train``: resolve a recipe against a dataset and fit with Lightning (checkpoints, logs, resume, DDP)."""

from __future__ import annotations

import csv
import io
import logging
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from monai.data import list_data_collate
from rich.progress import track
from torch.utils.data import DataLoader

from factorseg import models
from factorseg.bundles.format import check_weights, save_bundle
from factorseg.config import (
    SCHEMA,
    SECTIONS,
    DataConfig,
    TrainConfig,
    effective_channels,
    load_recipe,
    save_config,
    validate_recipe,
)
from factorseg.data.formats import DatasetInfo, load_dataset
from factorseg.data.labels import LabelSpec, get_label_spec
from factorseg.data.splits import load_or_create_splits, make_splits
from factorseg.data.transforms import LoadCased, TransformConfig, train_transforms, val_transforms
from factorseg.errors import InputError, InputWarning
from factorseg.io import atomic_path, atomic_write, write_json
from factorseg.models.layers import pool
from factorseg.training.data import CaseDataset, EpochSampler
from factorseg.training.module import SegmentationModule, ValidationStats


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed: a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, overwrite=True) as tmp:
            torch.save(checkpoint, tmp)


class TrainingDiverged(InputError):
    """The loss or the weights stopped being finite: the settings (usually ``train.lr``) do not train."""


def _finite_weights(module: pl.LightningModule) -> str | None:
    """The name of the first parameter holding NaN or infinite values, if any."""
    return next((n for n, p in module.named_parameters() if not bool(torch.isfinite(p.detach()).all())), None)


class FiniteGuard(Callback):
    """Stops training with one line as soon as the loss or the weights stop being finite.

    Lightning runs checkpoint callbacks after all others, and the guard comes first in the list, so the weights
    of an epoch that went bad are never written (neither checkpoints nor bundles); validation is not run on them.
    """

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def _diverged(self, what: str, trainer: pl.Trainer) -> TrainingDiverged:
        return TrainingDiverged(f"training diverged: {what} at step {trainer.global_step} (epoch "
                                f"{trainer.current_epoch}); lower train.lr (now {self.lr:g}) or set train.grad_clip")

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            raise self._diverged(f"the loss became {float(loss.detach().float().mean()):g}", trainer)

    def _check_weights(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        bad = _finite_weights(module)
        if bad is not None:
            raise self._diverged(f"weight {bad} became NaN or infinite", trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._check_weights(trainer, module)

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._check_weights(trainer, module)


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


# ------------------------------------------------------------------------------------------ metrics.csv
Rows = tuple[list[str], list[dict[str, str]]]


def _csv_bytes(header: list[str], rows: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _metrics_before(path: Path, step: int) -> Rows | None:
    """The header and the rows of ``metrics.csv`` logged before logger step ``step`` (what a resumed run keeps:
    the later ones are logged again when their steps are re-run). Read before anything is written."""
    if not path.is_file():
        return None
    try:
        text = path.read_bytes().decode("utf-8")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = list(reader.fieldnames or [])
        rows = [{k: v for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the run's metrics log ({exc}); move it away to resume") from None
    if not header:
        return None
    if "step" not in header:
        raise InputError(f"{path}: not a metrics log of factorseg train (no step column); move it away to resume")
    kept = []
    for number, row in enumerate(rows, start=2):
        try:
            logged = int(float(row.get("step") or ""))
        except ValueError:
            raise InputError(f"{path}: line {number} has no step number; move the file away to resume") from None
        if logged < step:
            kept.append(row)
    return header, kept


class _ResumedWriter(ExperimentWriter):
    """Lightning's CSV writer, starting ``metrics.csv`` with the rows a resumed run keeps.

    Lightning's own writer deletes an existing ``metrics.csv``, so a resumed run kept only its new rows.
    """

    def __init__(self, log_dir: str, kept: Rows | None) -> None:
        self._kept = kept
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self._kept is None:
            path.unlink(missing_ok=True)  # a new run starts its log afresh
            return
        header, rows = self._kept
        self.metrics_keys = list(header)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, _csv_bytes(header, rows), overwrite=True)


class RunCSVLogger(CSVLogger):
    """``logs/metrics.csv``, flushed at every logged step (a kill loses nothing already logged) and continued
    rather than restarted by ``--resume``."""

    def __init__(self, out_dir: Path, kept: Rows | None = None) -> None:
        super().__init__(out_dir, name="logs", version="", flush_logs_every_n_steps=1)
        self._kept = kept

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _ResumedWriter(self.log_dir, self._kept)
        return self._experiment


# ------------------------------------------------------------------------------------------ resume
_CKPT_KEYS = ("epoch", "global_step", "state_dict", "loops", "optimizer_states", "lr_schedulers")


def _resume_point(path: Path, module: SegmentationModule) -> int:
    """Check ``last.ckpt`` before Lightning reads it (plain data only, this run's model, finite weights) and return
    the logger step the run continues from."""
    cannot = f"{path}: cannot resume from it"
    try:
        if path.stat().st_size == 0:
            raise InputError(f"{cannot}: the file is empty")
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except InputError:
        raise
    except PermissionError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    except Exception:  # noqa: BLE001 - arbitrary bytes make the weights-only unpickler fail in many ways
        raise InputError(f"{cannot}: not a readable checkpoint, or it holds objects other than tensors and plain "
                         "data (refused to unpickle)") from None
    if not isinstance(raw, dict) or any(k not in raw for k in _CKPT_KEYS):
        raise InputError(f"{cannot}: not a checkpoint written by factorseg train")
    state = check_weights(raw["state_dict"], path)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        differ = sorted(set(expected) ^ set(got)) or sorted(k for k in expected if expected[k] != got[k])
        raise InputError(f"{cannot}: its weights do not fit the run's model (e.g. {differ[0]})")
    try:
        return int(raw["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"])
    except (KeyError, TypeError, ValueError):
        try:
            return int(raw["global_step"])
        except (TypeError, ValueError):
            raise InputError(f"{cannot}: not a checkpoint written by factorseg train") from None


# Settings a resumed run cannot change: the checkpoint holds the model, the optimizer and the data order they made.
# (Transforms first: the model's crop follows transforms.roi_size, and the message should name what was set.)
_FIXED_ON_RESUME = {
    "transforms": None,
    "data": ("labels", "folds", "fold", "splits_file", "use_flair"),
    "train": ("seed", "steps_per_epoch", "batch_size", "lr", "weight_decay", "warmup_epochs",
              "deep_supervision_weights", "squared_pred"),
    "model": None,
}


def _check_resume_changes(out_dir: Path, cfg: dict[str, Any]) -> None:
    saved_path = out_dir / "config.yaml"
    if not saved_path.is_file():
        raise InputError(f"--resume: {saved_path} not found; is {out_dir} a factorseg run?")
    saved = load_recipe(saved_path)
    for section, keys in _FIXED_ON_RESUME.items():
        names = sorted(set(saved[section]) | set(cfg[section])) if keys is None else keys
        for key in names:
            old, new = saved[section].get(key), cfg[section].get(key)
            if old != new and not (isinstance(old, list | tuple) and isinstance(new, list | tuple)
                                   and list(old) == list(new)):
                raise InputError(f"--resume continues the run as {saved_path} configures it: {section}.{key} was "
                                 f"{old!r}, now {new!r}; train into another --output to change it")


# ------------------------------------------------------------------------------------------ fine-tuning
def init_source(name_or_path: str) -> tuple[str, Any]:
    """What ``train.init_from`` records (a file's absolute path, or a shipped name) and the loaded model
    (:func:`factorseg.inference.loading.load_model`: bundles, factorseg Lightning checkpoints and shipped names,
    read with ``weights_only=True``)."""
    from factorseg.inference.loading import load_model

    path = Path(name_or_path).expanduser()
    recorded = str(path.resolve()) if path.exists() else name_or_path
    try:
        return recorded, load_model(str(path) if path.exists() else name_or_path, backend="torch")
    except InputError as exc:
        raise InputError(f"train.init_from: {exc}") from None


def _state_shapes(model_cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict the config builds (on the ``meta`` device where it can: no memory)."""
    from factorseg.bundles.format import build_model

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(model_cfg)
    except (NotImplementedError, RuntimeError):
        model = build_model(model_cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def head_keys(model_cfg: dict[str, Any]) -> set[str]:
    """The output head(s): the state-dict entries whose shape follows ``model.out_channels`` (found by building
    the architecture with one more output and comparing shapes)."""
    shapes = _state_shapes(model_cfg)
    more = _state_shapes({**model_cfg, "out_channels": int(model_cfg["out_channels"]) + 1})
    return {k for k in shapes if more.get(k) != shapes[k]}


def _architecture_hint(source_cfg: dict[str, Any], model_cfg: dict[str, Any], shown: int = 6) -> str:
    """``; the source's architecture differs in: -s model.stem=conv_block ...`` (the differing model settings as
    overrides, ``out_channels`` and ``in_channels`` aside), or "" when none differ."""
    import json

    source_cfg = models.explicit_architecture(dict(source_cfg))
    differing = [k for k in source_cfg if k not in ("in_channels", "out_channels", "name")
                 and source_cfg[k] != model_cfg.get(k)
                 and not (isinstance(source_cfg[k], list | tuple) and isinstance(model_cfg.get(k), list | tuple)
                          and list(source_cfg[k]) == list(model_cfg[k]))]
    if not differing:
        return ""
    def spelt(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))

    parts = [f"-s model.{k}={spelt(source_cfg[k])}" for k in differing[:shown]]
    more = f" (and {len(differing) - shown} more)" if len(differing) > shown else ""
    return "; to build the source's architecture set " + " ".join(parts) + more


def init_weights(source: Any, recorded: str, model_cfg: dict[str, Any], heads: str = "load") -> dict[str, torch.Tensor]:
    """The weights a run whose model is ``model_cfg`` starts from, taken from ``source`` (a LoadedModel).

    The rules (strict): the same architecture (registry name) with the same input channels; the state-dict
    keys and every shape equal the source's. With ``heads="skip"`` the output heads (:func:`head_keys`) are left
    out (they start fresh, so out_channels may differ); everything else still has to match. Otherwise one
    :class:`InputError` line names the first differing key and both shapes.
    """
    SCHEMA["train"].keys["init_from_heads"].check(heads, "train.init_from_heads")
    where = f"train.init_from {recorded}"
    src_cfg = source.config["model"]
    if src_cfg.get("name") != model_cfg.get("name"):
        raise InputError(f"{where}: is a {src_cfg.get('name')} model but this run builds {model_cfg.get('name')}; "
                         "fine-tuning needs the same architecture")
    src_in, _ = effective_channels(src_cfg)
    new_in = model_cfg.get("in_channels")
    if src_in != new_in:
        raise InputError(f"{where}: takes {src_in} input channels ({', '.join(source.channels)}) but this run's "
                         f"dataset has {new_in}; input channels must match")
    state = {k: v.detach().cpu() for k, v in source.model.state_dict().items()}
    expected = _state_shapes(model_cfg)
    skipped = head_keys(model_cfg) if heads == "skip" else set()
    for key in list(dict.fromkeys([*expected, *state])):
        if key in skipped:
            continue
        old, new = state.get(key), expected.get(key)
        if old is None or new is None:
            side = "the source" if old is None else "this run's model"
            raise InputError(f"{where}: weights do not fit this run's model: first differing key {key} is missing "
                             f"from {side} (same architecture and settings required)"
                             + _architecture_hint(src_cfg, model_cfg))
        if tuple(old.shape) != new:
            if key in head_keys(model_cfg):
                hint = "; an output head: pass --init-from-heads skip to start the heads fresh"
            else:
                hint = _architecture_hint(src_cfg, model_cfg)
            raise InputError(f"{where}: weights do not fit this run's model: first differing key {key} has shape "
                             f"{tuple(old.shape)} there and {new} here{hint}")
    return {k: v for k, v in state.items() if k not in skipped}


def load_init_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`init_weights`) into ``model``; only the skipped heads may be left out."""
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise InputError(f"train.init_from: weights do not fit this run's model ({result.unexpected_keys[0]})")


# ------------------------------------------------------------------------------------------ the run
@dataclass
class TrainResult:
    """Where a run left its outputs and its final validation scores.

    ``best_model`` is None when nothing was validated (``data.fold=all``): the result is then ``last_model``.
    """

    out_dir: Path
    best_model: Path | None
    last_model: Path
    metrics: dict[str, float]

    @property
    def validated(self) -> bool:
        return self.best_model is not None

    @property
    def model(self) -> Path:
        """The model to use: the best validated one, or the last one when nothing was validated."""
        return self.best_model if self.best_model is not None else self.last_model


def resolve_config(cfg: dict[str, Any], info: DatasetInfo) -> dict[str, Any]:
    """Fill in what the dataset decides (format, channels, labels, in/out channels) and check consistency."""
    cfg = {k: dict(v) for k, v in cfg.items()}
    labels = info.labels
    cfg["data"]["format"] = info.format  # the detected layout, so that config.yaml says what was read
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
    return cfg


def _precision(setting: str | int) -> str | int:
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _strategy(train: TrainConfig) -> str:
    devices, nodes = train.devices, train.num_nodes
    multi = (nodes > 1 or (isinstance(devices, int) and devices > 1) or devices == -1
             or (isinstance(devices, list) and len(devices) > 1) or "WORLD_SIZE" in os.environ)
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
    write_json(out_dir / "run_info.json", info, overwrite=True)


def _trainer(tr: TrainConfig, callbacks: list[Callback], out_dir: Path, progress: bool, kept: Rows | None,
             validate: bool) -> pl.Trainer:
    """The Lightning trainer for the ``train`` settings (creates no files by itself)."""
    return pl.Trainer(
        max_epochs=tr.epochs,
        max_time={"minutes": float(tr.max_minutes)} if tr.max_minutes else None,
        accelerator=tr.accelerator,
        devices=tr.devices,
        num_nodes=tr.num_nodes,
        strategy=_strategy(tr),
        precision=_precision(tr.precision),
        gradient_clip_val=tr.grad_clip or None,
        check_val_every_n_epoch=tr.val_interval,
        limit_val_batches=None if validate else 0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=[RunCSVLogger(out_dir, kept), TensorBoardLogger(out_dir, name="tensorboard", version="")],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=min(10, tr.steps_per_epoch),
        default_root_dir=out_dir,
    )


_LIGHTNING_CHATTER = (
    r".*does not have many workers.*", r".*The number of training batches.*", r".*treespec, LeafSpec.*",
    r".*exists and is not empty.*", r".*is deprecated.*", r".*`max_epochs` was not set.*",
)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's start-up chatter (accelerator lines, tips such as the litlogger one, "fit stopped") and
    its advisory and deprecation warnings: a user should see factorseg's lines, not library internals."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in _LIGHTNING_CHATTER:
                warnings.filterwarnings("ignore", message=pattern)
            try:
                from lightning.fabric.utilities.warnings import PossibleUserWarning
                from lightning.fabric.utilities.rank_zero import LightningDeprecationWarning

                warnings.filterwarnings("ignore", category=PossibleUserWarning)
                warnings.filterwarnings("ignore", category=LightningDeprecationWarning)
            except ImportError:  # pragma: no cover - another Lightning layout
                pass
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporary files that a killed run left behind mid-write (``atomic_path``'s ``.tmp-*`` names)."""
    for folder in (out_dir, out_dir / "checkpoints"):
        for tmp in folder.glob(".tmp-*"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)


def _remove_new(out_dir: Path, before: set[str] | None, extra: list[Path]) -> None:
    """Remove what a failed new run wrote: its folder if it made it, else the entries that were not there."""
    for path in extra:
        path.unlink(missing_ok=True)
    if not out_dir.is_dir():
        return
    if before is None:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    for path in out_dir.iterdir():
        if path.name not in before:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _data_summary(info: DatasetInfo, cfg: dict[str, Any], n_train: int, n_val: int) -> str:
    """One line: what the run found and how it splits it."""
    labels = get_label_spec(cfg["labels"])
    unlabelled = f" (+{len(info.test_cases)} unlabelled)" if info.test_cases else ""
    fold, folds = cfg["data"]["fold"], cfg["data"]["folds"]
    if n_val:
        split = f"fold {fold} of {folds}: {n_train} training, {n_val} validation cases"
    else:
        split = (f"all {n_train} cases train and none validates (data.fold=all): the result is the last "
                 "epoch's model, model_last.pt")
    return (f"data: {info.format} layout, {len(info.cases)} labelled cases{unlabelled}, {len(info.channels)} "
            f"channel{'s' if len(info.channels) != 1 else ''} ({', '.join(info.channels)}), labels "
            f"{labels.convention}: {labels.describe()}; {split}")


def _check_patch(cfg: dict[str, Any], model: torch.nn.Module) -> None:
    """Refuse a training patch the model cannot take, now rather than at the first training step.

    Factorizers say so themselves (:meth:`check_size`); other models run one forward pass on the ``meta`` device
    (shapes only, no memory or compute); where that device is unsupported the check is skipped.
    """
    from factorseg.bundles.format import build_model

    roi, name = list(cfg["transforms"]["roi_size"]), cfg["model"]["name"]
    check = getattr(model, "check_size", None)
    if callable(check):
        try:
            check(roi)
        except ValueError as exc:
            raise InputError(f"transforms.roi_size={roi} does not fit {name}: {exc}") from None
        return
    batch = TrainConfig.from_dict(cfg["train"]).batch_size * TransformConfig.from_dict(cfg["transforms"]).num_samples
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = build_model(cfg["model"]).train()
            meta(torch.empty(batch, int(cfg["model"]["in_channels"]), *roi))
    except NotImplementedError:
        return
    except (InputError, RuntimeError, ValueError, TypeError, IndexError, ZeroDivisionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "meta" in first.lower():
            return
        raise InputError(f"{name} cannot train on transforms.roi_size={roi} patches with these model settings "
                         f"({first})") from None


#: Fewer training steps than this are named as a likely cause of a zero validation Dice.
FEW_STEPS = 1000


def zero_dice_hint(best: float, stats: ValidationStats, labels: LabelSpec, steps: int) -> str | None:
    """One line on why the best validation Dice is 0 or undefined (``best`` <= 0; -1: never a finite score),
    from what the last validation pass saw (``stats``) and the steps trained; None when the Dice is positive.

    It says which of the usual causes hold: labels of the validation cases without foreground, predictions
    that are all background, too few training steps; the label values were checked against ``labels`` when
    the cases were loaded (values outside the convention stop training up front).
    """
    if best > 0:
        return None
    what = "0.000" if best == 0 else "undefined (NaN: no validation case gave a score)"
    names = list(labels.structure_names)
    if stats.cases == 0:
        return f"best validation Dice is {what}: no validation case was scored"
    reference = stats.reference or [0] * len(names)
    facts, cause = [], None
    empty = [n for n, count in zip(names, reference) if count == 0]
    cases = f"{stats.cases} validation case{'s' if stats.cases != 1 else ''}"
    if len(empty) == len(names):
        facts.append(f"the labels of the {cases} hold no foreground voxel ({', '.join(names)} all empty)")
        cause = ("validation labels without foreground: check the label files and the split (splits.json), "
                 "or give the validation fold cases with foreground")
    else:
        present = ", ".join(f"{n} {c}" for n, c in zip(names, reference) if c)
        facts.append(f"the labels of the {cases} hold foreground ({present} voxels"
                     + (f"; {', '.join(empty)} empty" if empty else "") + ")")
    values = ", ".join(map(str, labels.values))
    facts.append(f"their values are {labels.convention}'s ({values}; checked when loading)")
    few = steps < FEW_STEPS
    if stats.predicted == 0:
        facts.append("the model predicts only background")
        if cause is None:
            cause = (f"too few training steps ({steps}; real data usually need thousands): train longer with "
                     "--epochs / --steps-per-epoch" if few else
                     "predictions all background after enough steps: try a higher --lr, or check that each "
                     "image matches its label (same case and grid)")
    else:
        facts.append(f"it predicts {stats.predicted} foreground voxels")
        if cause is None:
            cause = ("predictions that miss the labelled voxels: check that each image matches its label (same case "
                     "and grid) and that --labels is the dataset's convention"
                     + (f"; {steps} training steps may also be too few" if few else ""))
    facts.append(f"{steps} training step{'s' if steps != 1 else ''}")
    return f"best validation Dice is {what}: " + "; ".join(facts) + f"; likely cause: {cause}"


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def train(
    cfg: dict[str, Any],
    data_path: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> TrainResult:
    """Train on the dataset at ``data_path`` with the recipe ``cfg``; outputs go to ``out_dir``.

    The recipe is checked first (:func:`factorseg.config.validate_recipe`), then every case; nothing is written
    before both pass. ``resume`` continues from ``out_dir/checkpoints/last.ckpt`` (model, optimizer, schedule,
    epoch, and the metrics logged before it). ``data.fold: all`` trains on every case without validation.
    ``train.init_from`` (a new run only; resume ignores it) starts from another model's weights under the rules
    of :func:`init_weights`, checked before anything is written; config.yaml records its absolute path or name.
    ``log`` receives the one-line summary of the data (None: quiet). A new run that fails before its first
    checkpoint removes what it wrote; a run that diverges (NaN or infinite loss or weights) stops with an
    :class:`~factorseg.errors.InputError` (exit status 2 on the command line).
    """
    out_dir = Path(out_dir)
    cfg = validate_recipe(cfg)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    last_ckpt = out_dir / "checkpoints" / "last.ckpt"
    if resume and not last_ckpt.exists():
        raise InputError(f"--resume: {last_ckpt} does not exist")
    if not resume and last_ckpt.exists():
        raise InputError(f"{out_dir} already holds a run; use --resume to continue it or choose another --output")
    data = DataConfig.from_dict(cfg["data"])
    info = load_dataset(data_path, data.format, labels=data.labels, use_flair=data.use_flair)
    if not info.cases:
        raise InputError(f"{data_path}: no labelled training cases found")
    cfg = resolve_config(cfg, info)
    tr = TrainConfig.from_dict(cfg["train"])
    init_state: dict[str, torch.Tensor] | None = None
    if resume:
        _check_resume_changes(out_dir, cfg)  # train.init_from is ignored: the checkpoint holds the weights
    elif tr.init_from:
        recorded, source = init_source(tr.init_from)
        cfg["train"]["init_from"] = recorded
        init_state = init_weights(source, recorded, cfg["model"], tr.init_from_heads)
        del source
    started = time.perf_counter()
    pl.seed_everything(tr.seed, workers=True, verbose=False)

    fold = data.fold
    by_id = {c["id"]: c for c in info.cases}
    splits_file: Path | None = None
    if fold == "all":
        train_cases, val_cases = list(info.cases), []
    else:
        splits_file = Path(data.splits_file or out_dir / "splits.json")
        if splits_file.exists():
            splits = load_or_create_splits(splits_file, info.case_ids, data.folds, tr.seed)
        else:  # written once the data have passed the checks below
            splits = make_splits(info.case_ids, data.folds, tr.seed)
        if not 0 <= fold < len(splits):
            raise InputError(f"data.fold={fold} but there are {len(splits)} folds")
        train_cases = [by_id[i] for i in splits[fold]["train"]]
        val_cases = [by_id[i] for i in splits[fold]["val"]]
        for name, cases in (("validation", val_cases), ("training", train_cases)):
            if not cases:
                raise InputError(f"{splits_file}: fold {fold} has no {name} cases; give it some, or train on "
                                 "every case without validation with --fold all")
    if log is not None and _is_rank_zero():
        log(_data_summary(info, cfg, len(train_cases), len(val_cases)))

    # Every case is read and checked (files, grids, label values) before anything is written, so that a bad
    # file stops the run with one line up front instead of mid-training: caching does it while loading.
    labels = get_label_spec(cfg["labels"])
    tcfg = TransformConfig.from_dict(cfg["transforms"])
    cache = data.cache
    train_set = CaseDataset(train_cases, train_transforms(tcfg, labels), cache, "Caching training cases", progress)
    val_set = CaseDataset(val_cases, val_transforms(tcfg, labels), cache, "Caching validation cases", progress)
    if not cache:
        check = LoadCased(labels=labels)
        for case in track(train_cases + val_cases, description="Checking cases", transient=True, disable=not progress):
            check(case)

    sampler = EpochSampler(len(train_set), tr.steps_per_epoch * tr.batch_size, tr.seed)
    train_loader = DataLoader(
        train_set, batch_size=tr.batch_size, sampler=sampler, num_workers=tr.num_workers,
        collate_fn=list_data_collate, persistent_workers=False,
    )
    validate = bool(val_cases)
    val_loader = DataLoader(val_set, batch_size=1, num_workers=0, collate_fn=list_data_collate) if validate else None

    module = SegmentationModule(cfg)
    if init_state is not None:  # before the first step (and before Lightning moves the model)
        load_init_weights(module.model, init_state)
        del init_state
    _check_patch(cfg, module.model)
    resume_step = _resume_point(last_ckpt, module) if resume else None
    kept = _metrics_before(out_dir / "logs" / "metrics.csv", resume_step) if resume_step is not None else None
    bundles = BundleWriter(out_dir, cfg)
    callbacks: list[Callback] = [FiniteGuard(tr.lr)]
    if validate:
        callbacks.append(ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor="val/dice",
                                         mode="max", save_top_k=1, enable_version_counter=False))
    callbacks += [
        # last.ckpt after every epoch, validated or not (a single monitored callback would only save on
        # validation epochs), so that a killed run loses at most one epoch.
        ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="last", save_top_k=1,
                        save_on_train_epoch_end=True, enable_version_counter=False),
        bundles,
    ]
    if progress:
        callbacks.append(RichProgressBar())
    try:
        with quiet_lightning():
            trainer = _trainer(tr, callbacks, out_dir, progress, kept, validate)
    except MisconfigurationException as exc:  # e.g. --accelerator gpu on a machine without one
        raise InputError(f"training settings: {str(exc).strip().splitlines()[0]}") from exc
    except (ValueError, TypeError) as exc:  # settings Lightning refuses that the recipe types let through
        raise InputError(f"training settings: {str(exc).strip().splitlines()[0]}") from exc

    # Nothing is written before this point: a refused run leaves no folder behind.
    before = None if not out_dir.exists() else {p.name for p in out_dir.iterdir()}
    written: list[Path] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            _remove_stale_temporaries(out_dir)
        if splits_file is not None and not splits_file.exists():
            load_or_create_splits(splits_file, info.case_ids, data.folds, tr.seed)
            if out_dir.resolve() not in splits_file.resolve().parents:
                written.append(splits_file)
        # Only the recipe sections: config.yaml is then a valid recipe, reloaded by --resume (labels and channels
        # are derived from the dataset again, and travel in the model bundles).
        save_config({key: cfg[key] for key in SECTIONS}, out_dir / "config.yaml")
        with quiet_lightning():
            trainer.fit(module, train_loader, val_loader, ckpt_path=last_ckpt if resume else None, weights_only=True)
            if validate and trainer.current_epoch % tr.val_interval != 0:
                # The last epochs were not validated: score the final weights too (may become the best model).
                trainer.validate(module, val_loader, verbose=False)
        planned = tr.epochs * tr.steps_per_epoch
        if trainer.global_step < planned and tr.max_minutes and trainer.is_global_zero:
            warnings.warn(f"training stopped at the time limit train.max_minutes={tr.max_minutes:g} after "
                          f"{trainer.global_step} of {planned} planned steps", InputWarning, stacklevel=2)
        best = out_dir / "model_best.pt" if validate else None
        if best is not None and trainer.is_global_zero:
            # A best Dice of 0 (or none at all) says nothing about why: one line on what was checked.
            hint = zero_dice_hint(bundles.best, module.val_stats, labels, int(trainer.global_step))
            if not best.exists():
                hint = (hint or "validation gave no Dice score") + "; model_best.pt is the last model"
                save_bundle(cfg, module.model, best)
            if hint is not None:
                warnings.warn(hint, InputWarning, stacklevel=2)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if trainer.is_global_zero:
            _write_run_info(out_dir, trainer, time.perf_counter() - started, metrics)
    except BaseException as exc:
        if not resume and not last_ckpt.exists():
            _remove_new(out_dir, before, written)
        elif isinstance(exc, TrainingDiverged):
            raise TrainingDiverged(f"{exc}; {out_dir} keeps the checkpoints of the epochs before") from None
        raise
    finally:
        pool.release()  # the buffers the layers kept between steps, back to the system once the run is over
    return TrainResult(out_dir, best, out_dir / "model_last.pt", metrics)
