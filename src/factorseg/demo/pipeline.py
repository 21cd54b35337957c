"""``factorseg demo``: the whole idea in a few minutes on a CPU, with nothing downloaded.

Every step uses the library's normal code path, exactly what the CLI commands run:

1. data: synthetic multi-modal brain-tumour cases (:mod:`factorseg.data.synthetic`) in the BraTS 2021 layout,
   ``cases`` for training (the run's own validation fold is drawn from them) and ``held_out`` more that
   training never sees, with their reference masks kept in a separate folder;
2. train: the ``demo`` recipe with :func:`factorseg.training.train` (``factorseg train``);
3. predict: the best model on the held-out scans with :class:`~factorseg.inference.pipeline.SegmentationPredictor`
   (``factorseg predict``);
4. evaluate: Dice and HD95 per BraTS region with :func:`~factorseg.evaluation.folders.evaluate_folders`
   (``factorseg evaluate``);
5. explain: the NMF component maps of one Factorizer block on one held-out case with
   :func:`~factorseg.explain.run.explain_case` (``factorseg explain``);
6. report: ``DIR/report.html`` (scores, learning curve, overlays, component maps) and ``DIR/summary.json``
   with the very numbers the report shows.

``minutes`` turns a training time budget into a number of epochs from a measured step time; without it the
recipe's fixed schedule runs (reproducible for a seed on a given machine). Torch's thread count is the caller's
(``factorseg demo`` leaves one core free); ``summary.json`` records it.
"""

from __future__ import annotations

import math
import shlex
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from factorseg import __version__
from factorseg.console import output_console
from factorseg.errors import InputError
from factorseg.io import write_json

__all__ = ["DEFAULT_BLOCK", "DemoResult", "plan_epochs", "run_demo"]

#: Synthetic training cases (the training run validates on 1/folds of them) and held-out test cases.
DEFAULT_CASES = 24
DEFAULT_HELD_OUT = 6
#: Edge length of the synthetic volumes in voxels (1 mm isotropic).
DEFAULT_SHAPE = 48
#: The block whose NMF components the report shows: the decoder block at half resolution.
DEFAULT_BLOCK = "decoder.1.0"
#: Regions of the BraTS convention and the label values they unite.
REGION_HELP = {
    "TC": "tumour core = necrotic core (1) + enhancing tumour (4)",
    "WT": "whole tumour = 1 + edema (2) + 4",
    "ET": "enhancing tumour = 4",
}
REGION_VALUES = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
#: Everything the demo writes inside ``out_dir``; ``overwrite`` removes exactly these and nothing else.
OUTPUT_NAMES = ("data", "run", "predictions", "scores", "explain", "figures", "report.html", "summary.json")


@dataclass
class DemoResult:
    """Where the demo left its outputs and its held-out scores."""

    out_dir: Path
    report: Path
    summary_json: Path
    dice: dict[str, float]
    mean_dice: float
    seconds: float
    steps: int

    def print_summary(self, console: Console | None = None) -> None:
        """A short table: mean held-out Dice per region and overall, wall time and the report's path."""
        table = Table(title="Held-out Dice", title_justify="left", show_header=True)
        for region in self.dice:
            table.add_column(region, justify="right")
        table.add_column("mean", justify="right", style="bold")
        table.add_row(*(f"{v:.3f}" for v in self.dice.values()), f"{self.mean_dice:.3f}")
        console = console or output_console()
        console.print(table)
        console.print(f"Wall time {self.seconds / 60:.1f} min ({_plural(self.steps, 'training step')})")
        console.print(f"Report: {self.report}", soft_wrap=True)


def _quiet_lightning():  # noqa: ANN202 - the context manager of factorseg.training.run
    from factorseg.training.run import quiet_lightning

    return quiet_lightning()


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir``; refuse (or with ``overwrite`` remove) the demo outputs already in it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    present = [out_dir / name for name in OUTPUT_NAMES if (out_dir / name).exists()]
    if present and not overwrite:
        raise InputError(f"{out_dir} already holds demo outputs ({present[0].name}, ...); "
                         "pass --overwrite to replace them or choose another --output")
    for path in present:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _make_data(data_dir: Path, cases: int, held_out: int, seed: int, shape: int) -> tuple[Path, Path, Path]:
    """Write the synthetic cases; move the last ``held_out`` ones out of the training folder.

    Returns the training folder, the held-out image folder (BraTS layout without masks) and the folder of
    held-out reference masks (``<case id>.nii.gz``, as ``factorseg evaluate`` expects).
    """
    from factorseg.data.synthetic import write_brats_dataset

    train_dir, held_dir, ref_dir = data_dir / "train", data_dir / "held_out" / "images", data_dir / "held_out" / "labels"
    folders = write_brats_dataset(train_dir, cases + held_out, seed=seed, shape=(shape,) * 3, skull_strip=True)
    held_dir.mkdir(parents=True)
    ref_dir.mkdir(parents=True)
    for folder in folders[cases:]:
        target = held_dir / folder.name
        folder.rename(target)
        (target / f"{folder.name}_seg.nii.gz").rename(ref_dir / f"{folder.name}.nii.gz")
    return train_dir, held_dir, ref_dir


def _windows(size: int, roi: int, overlap: float) -> int:
    """Sliding windows along one axis of length ``size`` (MONAI's scan-interval rule)."""
    if size <= roi:
        return 1
    return math.ceil((size - roi) / max(1, int(roi * (1 - overlap)))) + 1


def _measure_seconds(cfg: dict[str, Any]) -> tuple[float, float]:
    """Steady-state seconds of one training step (forward, loss, backward, AdamW) and of one inference window.

    Measured on noise after a warm-up step (which allocates), averaging up to four steps or about ten
    seconds, whichever comes first.
    """
    from factorseg.config import TrainConfig
    from factorseg.data.labels import get_label_spec
    from factorseg.data.transforms import TransformConfig
    from factorseg.bundles.format import build_model
    from factorseg.training.module import make_loss

    roi = tuple(int(s) for s in cfg["transforms"]["roi_size"])
    model = build_model(cfg["model"])
    train = TrainConfig.from_dict(cfg["train"])
    loss_fn = make_loss(get_label_spec("brats2021"), train.deep_supervision_weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    patches = train.batch_size * TransformConfig.from_dict(cfg["transforms"]).num_samples
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(patches, int(cfg["model"]["in_channels"]), *roi, generator=generator)
    y = (torch.rand(patches, int(cfg["model"]["out_channels"]), *roi, generator=generator) > 0.5).float()

    def step() -> float:
        start = time.perf_counter()
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    model.train()
    step()
    timed = [step()]
    while len(timed) < 4 and sum(timed) < 10.0:
        timed.append(step())
    model.eval()
    with torch.inference_mode():
        model(x[:1])
        start = time.perf_counter()
        model(x[:1])
        forward = time.perf_counter() - start
    return float(np.mean(timed)), forward


def plan_epochs(cfg: dict[str, Any], minutes: float, n_val: int, shape: int) -> int:
    """Epochs of the recipe's ``steps_per_epoch`` that fit ``minutes`` of training on this machine.

    One epoch costs ``steps_per_epoch`` measured steps plus, every ``val_interval`` epochs, a sliding-window
    pass over the ``n_val`` validation volumes of edge ``shape`` (after preprocessing); 15 % is added for data
    loading and logging.
    """
    if minutes <= 0:
        raise InputError(f"--minutes must be positive, got {minutes}")
    from factorseg.config import InferenceConfig, TrainConfig

    step, forward = _measure_seconds(cfg)
    train, inference = TrainConfig.from_dict(cfg["train"]), InferenceConfig.from_dict(cfg["inference"])
    roi = [int(s) for s in cfg["transforms"]["roi_size"]]
    windows = math.prod(_windows(shape, r, inference.overlap) for r in roi)
    validation = n_val * windows * forward / inference.sw_batch_size
    epoch = 1.15 * (train.steps_per_epoch * step + validation / train.val_interval)
    return max(1, int(minutes * 60 / epoch))


def _demo_recipe(cases: int, seed: int, overrides: Sequence[str], block: str) -> tuple[dict[str, Any], list[str]]:
    """The ``demo`` recipe with the seed and the folds the cases allow, checked (before anything is written).

    Returns the config and the overrides applied to the shipped recipe (to print the equivalent command).
    """
    from factorseg.bundles.format import build_model
    from factorseg.config import apply_overrides, load_recipe, validate_recipe

    cfg = load_recipe("demo")
    applied = [f"train.seed={seed}", f"data.folds={min(int(cfg['data']['folds']), cases)}", *overrides]
    cfg = validate_recipe(apply_overrides(cfg, applied))
    from factorseg.explain import list_blocks

    # Sizes that do not fit together, and a block the model lacks, are refused now, not after training.
    blocks = list_blocks(build_model(cfg["model"]))
    if block not in blocks:
        raise InputError(f"block {block!r} is not in the demo model; its blocks are {', '.join(blocks)}")
    return cfg, applied


def _fit_budget(cfg: dict[str, Any], applied: list[str], cases: int, minutes: float | None, shape: int,
                console: Console, progress: bool) -> tuple[dict[str, Any], list[str]]:
    """The recipe with the epochs that fit ``minutes`` (measured here) and the hard stop at ``minutes``."""
    if minutes is None:
        return cfg, applied
    n_val = math.ceil(cases / int(cfg["data"]["folds"]))
    with console.status("Timing a few training steps to fit the time budget") if progress else _nothing():
        # Validation runs on the foreground crop: the synthetic brain spans about 0.8 of the field of view.
        epochs = plan_epochs(cfg, minutes, n_val, int(0.8 * shape))
    console.print(f"  training budget {minutes:g} min: about {_plural(epochs, 'epoch')} of "
                  f"{cfg['train']['steps_per_epoch']} steps (hard stop at {minutes:g} min)")
    cfg = {**cfg, "train": {**cfg["train"], "epochs": epochs, "max_minutes": float(minutes)}}
    return cfg, [*applied, f"train.epochs={epochs}", f"train.max_minutes={minutes:g}"]


def _read(path: Path) -> np.ndarray:
    from factorseg.io import read_image

    return read_image(path).array


def _pick_cases(per_case: dict[str, dict[str, float]], regions: Sequence[str]) -> dict[str, str]:
    """The best, median and worst held-out case by mean Dice (fewer when there are fewer cases)."""
    ranked = sorted(per_case, key=lambda c: (-float(np.mean([per_case[c][f"dice/{r}"] for r in regions])), c))
    picks = {"best": ranked[0], "median": ranked[len(ranked) // 2], "worst": ranked[-1]}
    if len(ranked) < 3:
        picks.pop("median")
    if len(ranked) < 2:
        picks.pop("worst")
    return picks


def _overlay_cases(picks: dict[str, str], per_case: dict[str, dict[str, float]], regions: Sequence[str],
                   held_dir: Path, ref_dir: Path, pred_dir: Path) -> list[Any]:
    """The picked cases' FLAIR, T1ce, reference and prediction for :func:`factorseg.demo.report.plot_overlays`."""
    from factorseg.demo.report import OverlayCase

    return [
        OverlayCase(
            case_id=case, title=f"{title} case", flair=_read(held_dir / case / f"{case}_flair.nii.gz"),
            t1ce=_read(held_dir / case / f"{case}_t1ce.nii.gz"), reference=_read(ref_dir / f"{case}.nii.gz"),
            prediction=_read(pred_dir / f"{case}.nii.gz"), dice={r: per_case[case][f"dice/{r}"] for r in regions},
        )
        for title, case in picks.items()
    ]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _training_info(cfg: dict[str, Any], run_dir: Path, validation: dict[str, float]) -> dict[str, Any]:
    """Planned and completed training (from the run's ``run_info.json``), time limit and final validation."""
    import json

    info = json.loads((run_dir / "run_info.json").read_text(encoding="utf-8"))
    tr = cfg["train"]
    planned = int(tr["epochs"]) * int(tr["steps_per_epoch"])
    return {
        "steps_per_epoch": int(tr["steps_per_epoch"]),
        "epochs_planned": int(tr["epochs"]),
        "steps_planned": planned,
        "epochs_run": int(info["epochs"]),
        "steps_run": int(info["global_steps"]),
        "max_minutes": tr.get("max_minutes"),
        "stopped_by_time_limit": int(info["global_steps"]) < planned,
        "validation": validation,
    }


def _training_text(training: dict[str, Any]) -> str:
    """E.g. "144 steps (12 epochs of 12)", plus the time limit when it stopped training early."""
    text = (f"{_plural(training['steps_run'], 'step')} ({_plural(training['epochs_run'], 'epoch')} of "
            f"{training['steps_per_epoch']})")
    if training["stopped_by_time_limit"]:
        text += (f", stopped by the {training['max_minutes']:g}-minute time limit before the "
                 f"{training['steps_planned']} planned steps")
    return text


def _commands(out_dir: Path, applied: Sequence[str]) -> str:
    """The CLI commands that repeat the training, prediction and evaluation steps of this run."""
    settings = " ".join(f"-s {shlex.quote(item)}" for item in applied)
    return "\n".join([
        f"DIR={shlex.quote(str(out_dir))}",
        f"factorseg train -d $DIR/data/train -o $DIR/run --recipe demo \\\n    {settings}",
        "factorseg predict -m $DIR/run/model_best.pt -i $DIR/data/held_out/images -o $DIR/predictions",
        "factorseg evaluate -p $DIR/predictions -r $DIR/data/held_out/labels --labels-from $DIR/run/model_best.pt \\\n"
        "    -o $DIR/scores",
    ])


def _intro_html(cases: int, held_out: int, shape: int, cfg: dict[str, Any], training: dict[str, Any],
                out_dir: Path, applied: Sequence[str]) -> str:
    """The "what you are looking at" text, with the equivalent commands to run each step by hand."""
    import html

    model = cfg["model"]
    roi = "×".join(str(s) for s in cfg["transforms"]["roi_size"])
    n_val = math.ceil(cases / cfg["data"]["folds"])
    return (
        f"<p>Everything on this page was produced on this computer in one run of <code>factorseg demo</code>, "
        f"without downloading anything. <b>Data:</b> {cases + held_out} synthetic skull-stripped brain MRI scans "
        f"({shape}³ voxels of 1 mm; four modalities: FLAIR, T1, T1ce, T2), each with a glioma-like tumour, "
        "generated from a seed with the BraTS 2021 labels necrotic core (1), edema (2) and enhancing tumour (4). "
        f"{cases} cases trained the model (the training run checked its progress on {_plural(n_val, 'case')} of "
        f"them); the <b>{_plural(held_out, 'held-out case')}</b> scored below were never seen in training.</p>"
        f"<p><b>Model:</b> a small Swin Factorizer (<code>{model['name']}</code>, widths {model['widths']}): a "
        "U-shaped network whose blocks mix context with a differentiable non-negative matrix factorisation (NMF) "
        f"of each {model['window_size']}³-voxel window instead of attention. It was trained for "
        f"{_training_text(training)} on random {roi} patches "
        "(recipe <code>demo</code>), predicts the three nested BraTS regions (TC, WT, ET) with one sigmoid "
        "output each, and segments each held-out scan with sliding windows.</p>"
        "<p>The same steps by hand (see <code>factorseg COMMAND --help</code>):</p>"
        f"<pre>{html.escape(_commands(out_dir, applied))}</pre>"
    )


def run_demo(
    out_dir: str | Path = "demo_out",
    minutes: float | None = None,
    cases: int = DEFAULT_CASES,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    *,
    held_out: int = DEFAULT_HELD_OUT,
    shape: int = DEFAULT_SHAPE,
    overrides: Sequence[str] = (),
    block: str = DEFAULT_BLOCK,
    console: Console | None = None,
) -> DemoResult:
    """Generate data, train, predict, evaluate, explain, and write ``out_dir/report.html`` (see module doc).

    Args:
        out_dir: output folder (created); demo outputs already in it are refused unless ``overwrite``.
        minutes: training time budget; ``None`` runs the ``demo`` recipe's fixed number of epochs.
        cases: synthetic training cases (at least 2; the run validates on one fold of them).
        seed: seed of the data, the splits and the training.
        progress: show progress bars (stage lines and the final summary are printed regardless).
        overwrite: replace the demo outputs already in ``out_dir``.
        held_out: synthetic cases kept out of training and scored in the report.
        shape: edge length of the synthetic volumes in voxels.
        overrides: ``section.key=value`` recipe overrides (e.g. ``train.steps_per_epoch=2``).
        block: the Factorizer block whose NMF components the report shows.
        console: where to print (default: stdout).
    """
    console = console or output_console()
    _whole(cases, "--cases")
    _whole(held_out, "held_out")
    _whole(shape, "shape")
    if cases < 2:
        raise InputError(f"the demo needs at least 2 training cases, got {cases}")
    if held_out < 1:
        raise InputError(f"the demo needs at least 1 held-out case, got {held_out}")
    if cases + held_out > MAX_CASES:
        raise InputError(f"the demo makes at most {MAX_CASES} synthetic cases, got {cases} + {held_out}")
    if not 32 <= shape <= MAX_SHAPE:
        raise InputError(f"synthetic volumes must be 32 to {MAX_SHAPE} voxels wide, got {shape}")
    if minutes is not None:
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not math.isfinite(minutes) \
                or minutes <= 0:
            raise InputError(f"--minutes must be positive (a finite number of minutes), got {minutes}")
        if minutes > MAX_MINUTES:
            raise InputError(f"--minutes must be at most {MAX_MINUTES} (a week), got {minutes:g}")
    _whole(seed, "--seed")
    if not 0 <= seed <= 2**32 - 1:
        raise InputError(f"--seed must be an integer in [0, {2**32 - 1}], got {seed}")
    cfg, applied = _demo_recipe(cases, seed, overrides, block)
    out_dir = Path(out_dir).expanduser()
    created = not out_dir.exists()
    _prepare_out_dir(out_dir, overwrite)
    try:
        return _pipeline(out_dir, minutes, cases, seed, progress, held_out, shape, cfg, applied, block, console)
    except BaseException:
        _remove_outputs(out_dir, created)  # nothing half-made stays behind
        raise


#: Limits of the demo's settings (its data are made in memory and on disk).
MAX_CASES = 2000
MAX_SHAPE = 256
MAX_MINUTES = 7 * 24 * 60


def _whole(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer, got {value!r}")


def _remove_outputs(out_dir: Path, created: bool) -> None:
    """Remove what a failed demo wrote into ``out_dir`` (only the demo's own output names; the folder if new)."""
    for name in OUTPUT_NAMES:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
    if created:
        try:
            out_dir.rmdir()
        except OSError:
            pass


def _pipeline(out_dir: Path, minutes: float | None, cases: int, seed: int, progress: bool, held_out: int, shape: int,
              cfg: dict[str, Any], applied: list[str], block: str, console: Console) -> DemoResult:
    """The six steps of :func:`run_demo` into the prepared ``out_dir``."""
    from factorseg.demo import report
    from factorseg.data.formats import cases_from_paths
    from factorseg.evaluation.folders import evaluate_folders
    from factorseg.explain import explain_case, list_blocks
    from factorseg.inference.loading import load_model
    from factorseg.inference.pipeline import SegmentationPredictor
    from factorseg.training import train

    started = time.perf_counter()
    timing: dict[str, float] = {}

    def stage(name: str, since: float) -> float:
        now = time.perf_counter()
        timing[name] = round(now - since, 2)
        return now

    console.print(f"[bold]1/6[/] Generating {cases} training + {held_out} held-out synthetic cases ({shape}³)")
    with console.status("Generating synthetic scans", spinner="dots") if progress else _nothing():
        train_dir, held_dir, ref_dir = _make_data(out_dir / "data", cases, held_out, seed, shape)
    cfg, applied = _fit_budget(cfg, applied, cases, minutes, shape, console, progress)
    now = stage("data", started)

    tr = cfg["train"]
    console.print(f"[bold]2/6[/] Training the demo Factorizer: {_plural(int(tr['epochs']), 'epoch')} of "
                  f"{tr['steps_per_epoch']} steps")
    with _quiet_lightning():
        trained = train(cfg, train_dir, out_dir / "run", progress=progress,
                        log=lambda line: console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True))
    training = _training_info(cfg, out_dir / "run", trained.metrics)
    now = stage("train", now)

    console.print(f"[bold]3/6[/] Predicting the {held_out} held-out cases with {trained.best_model.name}")
    loaded = load_model(trained.best_model)
    predictor = SegmentationPredictor([loaded])
    test_cases = cases_from_paths([held_dir], len(predictor.channels))
    predictor.predict_to_folder(test_cases, out_dir / "predictions", progress=progress)
    now = stage("predict", now)

    console.print("[bold]4/6[/] Scoring the predictions against the held-out reference masks")
    regions = list(loaded.labels.names)
    scores = evaluate_folders(out_dir / "predictions", ref_dir, loaded.labels, ("dice", "hd95"), out_dir / "scores")
    now = stage("evaluate", now)

    per_case = scores.per_case
    picks = _pick_cases(per_case, regions)
    explained = picks.get("median", picks["best"])
    blocks = list_blocks(loaded.model)
    if block not in blocks:
        raise InputError(f"block {block!r} is not in the demo model; its blocks are {', '.join(blocks)}")
    console.print(f"[bold]5/6[/] Extracting the NMF components of block {block} on case {explained}")
    case = next(c for c in test_cases if c["id"] == explained)
    # On the FLAIR grid, scored inside the brain against the case's reference regions.
    components = explain_case(loaded, case["image"], out_dir / "explain", label=ref_dir / f"{explained}.nii.gz",
                              brain_mask=True, blocks=[block], label_values=REGION_VALUES, slices=3,
                              montage_components=6, overwrite=True)
    now = stage("explain", now)

    console.print("[bold]6/6[/] Writing the report")
    summary = _summary(scores, regions, cfg, training, cases, held_out, shape, seed, minutes, block, explained,
                       components)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir()
    curve = report.plot_learning_curve(report.read_metrics_csv(out_dir / "run" / "logs" / "metrics.csv"), regions,
                                       figures_dir / "learning_curve.png")
    overlays = report.plot_overlays(
        _overlay_cases(picks, per_case, regions, held_dir, ref_dir, out_dir / "predictions"),
        figures_dir / "overlays.png",
    )
    montage = _plot_components(components, block, case, ref_dir / f"{explained}.nii.gz", out_dir / "explain",
                               figures_dir / "components.png")
    content = report.ReportContent(
        title="factorseg demo: a Factorizer on synthetic brain tumours",
        intro_html=_intro_html(cases, held_out, shape, cfg, training, out_dir, applied),
        regions=regions,
        region_help=REGION_HELP,
        scores=summary["scores"],
        mean_dice=summary["mean_dice"],
        per_case=summary["per_case"],
        figures=[
            ("Learning curve", curve, _CURVE_CAPTION),
            ("Held-out cases: reference and prediction", overlays, _OVERLAY_CAPTION),
            (f"What the NMF components of one block look at ({block})", montage,
             _components_caption(block, explained, components)),
        ],
        facts=_facts(summary, timing, out_dir),
    )
    report_path = report.write_report(out_dir / "report.html", content)
    stage("report", now)
    timing["total"] = round(time.perf_counter() - started, 2)
    summary["timing_s"] = timing
    summary_path = write_json(out_dir / "summary.json", summary, overwrite=True)

    dice = {r: summary["scores"][r]["dice"]["mean"] for r in regions}
    result = DemoResult(out_dir, report_path, summary_path, dice, summary["mean_dice"], timing["total"],
                        training["steps_run"])
    result.print_summary(console)
    return result


@contextmanager
def _nothing() -> Iterator[None]:
    yield


_CURVE_CAPTION = (
    "Left: the training loss (Dice + binary cross-entropy, averaged over each epoch's steps). Right: Dice of "
    "the training run's own validation cases (one cross-validation fold of the training cases, full volumes "
    "by sliding window), measured every few epochs; the model with the best mean is the one used here."
)
_OVERLAY_CAPTION = (
    "The best, median and worst held-out case by mean Dice, on the axial slice with the most tumour. "
    "Columns: FLAIR and T1ce scans, then the reference and the predicted labels over FLAIR: "
    "<b>red</b> necrotic core (label 1), <b>green</b> edema (2), <b>yellow</b> enhancing tumour (4). "
    "The regions scored above nest: ET = 4, TC = 1 + 4, WT = 1 + 2 + 4. The cyan line on the prediction is "
    "the outline of the reference tumour (WT)."
)


def _plot_components(components: dict[str, Any], block: str, case: dict[str, Any], ref_path: Path, explain_dir: Path,
                     out_png: Path) -> Path:
    """The report's component figure, from the maps :func:`~factorseg.explain.run.run_explain` wrote (on the FLAIR grid)."""
    from factorseg.io import read_image
    from factorseg.demo.report import plot_components

    info = components["blocks"][block]
    maps = np.moveaxis(read_image(explain_dir / info["files"]["nifti"], expect_3d=False).array, -1, 0)
    shown = info["montage_components"]
    auc = {(int(row["component"]), row["label"]): row["auc"] for row in components.get("overlap", [])
           if row["block"] == block}
    titles = []
    for k in shown:
        entry = info["components"][k]
        name = f"head {entry['head']}" + (f", component {entry['component']}" if info["rank"] > 1 else "")
        scores = [f"{region} {auc[k, region]:.2f}" for region in REGION_VALUES if auc.get((k, region)) is not None]
        titles.append(f"{name}\nAUC {' '.join(scores)}" if scores else name)
    return plot_components(_read(Path(case["image"][0])), _read(ref_path), maps[shown], titles, out_png)


def _components_caption(block: str, case: str, components: dict[str, Any]) -> str:
    info = components["blocks"][block]
    shown = len(info["montage_components"])
    total = len(info["components"])
    which = f"All {total} maps are shown" if shown == total else (
        f"Shown are the {shown} of the {total} maps that best separate a tumour region")
    return (
        f"Block <code>{block}</code> of the trained model, run on held-out case {case}, works on a "
        f"{'×'.join(map(str, info['spatial']))}-voxel feature map (stride {info['stride'][0]}). In each "
        f"{'×'.join(map(str, info['window']))} window it approximates every head's features (a non-negative "
        f"{info['head_dim']} channels × window voxels matrix) by a rank-{info['rank']} product U·Vᵀ. The "
        "<b>component map</b> of a head is its spatial factor V put back in place, scaled by the size of the "
        "channel loading U: how strongly the head's one channel pattern is present at each voxel. "
        f"{which}, over FLAIR on the axial and coronal slices with the most tumour (left: the "
        "reference labels; cyan: the reference tumour outline); each map has its own colour scale from 0 to its "
        "maximum in the brain. AUC: how well the map alone ranks the voxels of the named region (WT, TC or ET) "
        "above the rest of the brain: 1 = perfectly, 0.5 = chance, near 0 = the map marks the region by being "
        "low there, which is just as informative. "
        "No component was trained to follow the tumour; only the final segmentation was supervised."
    )


def _summary(scores: Any, regions: list[str], cfg: dict[str, Any], training: dict[str, Any], cases: int,
             held_out: int, shape: int, seed: int, minutes: float | None, block: str, explained: str,
             components: dict[str, Any]) -> dict[str, Any]:
    """The content of ``summary.json``: the scores the report shows, the settings and the explained block."""
    by_region = {
        r: {m: {k: scores.summary[f"{m}/{r}"][k] for k in ("mean", "std", "median", "min", "max")}
            for m in ("dice", "hd95")}
        for r in regions
    }
    tr = cfg["train"]
    return {
        "factorseg_version": __version__,
        "created": datetime.now().isoformat(timespec="seconds"),
        "report": "report.html",
        "mean_dice": float(np.mean([by_region[r]["dice"]["mean"] for r in regions])),
        "regions": regions,
        "scores": by_region,
        "per_case": {c: {k: float(v) for k, v in values.items()} for c, values in scores.per_case.items()},
        "training": training,
        "settings": {
            "recipe": "demo", "train_cases": cases, "held_out_cases": held_out, "shape": [shape] * 3, "seed": seed,
            "minutes": minutes, "batch_size": int(tr["batch_size"]),
            "patches_per_volume": int(cfg["transforms"].get("num_samples", 1)),
            "roi_size": list(cfg["transforms"]["roi_size"]), "model": cfg["model"], "folds": int(cfg["data"]["folds"]),
            "torch_threads": torch.get_num_threads(),
        },
        "explained": {"case": explained, "block": block,
                      "montage_components": components["blocks"][block]["montage_components"]},
    }


def _facts(summary: dict[str, Any], timing: dict[str, float], out_dir: Path) -> list[tuple[str, str]]:
    s = summary["settings"]
    steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timing.items())
    return [
        ("synthetic cases", f"{s['train_cases']} training, {s['held_out_cases']} held out, {s['shape'][0]}³ voxels, "
                            f"seed {s['seed']}"),
        ("training", f"{_training_text(summary['training'])}; each step {s['batch_size']} volumes × "
                     f"{s['patches_per_volume']} random patches of {'×'.join(map(str, s['roi_size']))} voxels"),
        ("CPU threads", str(s["torch_threads"])),
        ("wall time per stage", steps),
        ("factorseg", summary["factorseg_version"]),
        ("outputs", f"{out_dir}: data/, run/ (model, logs), predictions/, scores/, explain/, figures/, summary.json"),
    ]


