"""Hippocampus (MSD Task04) campaign: train, predict and evaluate with the normal CLI, per model and fold.

Run (a documented subset of folds when the budget does not allow five; runs resume where they stopped):
    .venv/bin/python benchmarks/hippocampus.py --out ~/runs/hippo_paper --folds 0 \
        --models swin_factorizer segresnet dynunet
    .venv/bin/python benchmarks/hippocampus.py --out ~/runs/hippo_paper --folds 0 --eval-only \
        --plot docs/images/hippocampus_curves.png

Every model gets the same data, augmentation, splits, schedule, steps and seed (recipes ``hippocampus``,
``hippocampus_dynunet``, ``hippocampus_segresnet``; ``swin_factorizer_wide`` is the Factorizer recipe with
widths 32-64-128-256, 1.4 M parameters). Held-out cases are the fold's validation cases,
predicted by ``factorseg predict`` and scored by ``factorseg evaluate``. For the Factorizer it also
measures the test-time NMF iteration trade-off (Dice and prediction time per case for 5, 3, 2, 1, 0
iterations of the same model) and scores its NMF components against the anatomy
(``factorseg explain --label``: AUC of each component's map for anterior and posterior hippocampus).
Learning curves (validation Dice vs step) come from each run's ``logs/metrics.csv``, step times from
its TensorBoard event times. Results: ``OUT/results.json`` and Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

#: Campaign model name -> (recipe, overrides of that recipe).
RECIPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "swin_factorizer": ("hippocampus", ()),
    "swin_factorizer_wide": ("hippocampus", ("model.widths=[32,64,128,256]",)),
    "dynunet": ("hippocampus_dynunet", ()),
    "segresnet": ("hippocampus_segresnet", ()),
}
DEFAULT_MODELS = ("swin_factorizer", "dynunet", "segresnet")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hippocampus"
CLASSES = ("Anterior", "Posterior")


def factorseg(*args: str) -> None:
    """Run the CLI as a user would; stop on failure."""
    cmd = [sys.executable, "-m", "factorseg", *args]
    print("$ factorseg " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def held_out(run: Path, fold: int, data: Path, work: Path) -> tuple[list[str], Path]:
    """Image paths of the fold's validation cases and a folder of links to their reference labels."""
    splits = json.loads((run / "splits.json").read_text())
    refs = work / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    images = []
    for case in splits[fold]["val"]:
        images.append(str(data / "imagesTr" / f"{case}.nii.gz"))
        link = refs / f"{case}.nii.gz"
        if not link.exists():
            link.symlink_to(data / "labelsTr" / f"{case}.nii.gz")
    return images, refs


def predict_and_score(model: Path, images: list[str], refs: Path, out: Path, extra: list[str],
                      device: str = "cpu") -> dict[str, Any]:
    """Predict the held-out cases, score them; wall time of the predict command and the load around it."""
    preds, scores = out / "pred", out / "scores"
    extra = [*extra, "--device", device]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    factorseg("predict", "-m", str(model), "-i", *images, "-o", str(preds), "--no-progress", "--overwrite", *extra)
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    factorseg("evaluate", "-p", str(preds), "-r", str(refs), "--labels-from", str(model), "-o", str(scores),
              "--metrics", "dice", "hd95")
    summary = json.loads((scores / "summary.json").read_text())
    return {"summary": summary, "predict_seconds": seconds, "cases": len(images),
            "load_average": [load_before, load_after]}


def stat(summary: dict[str, Any], key: str) -> dict[str, float]:
    return summary["metrics"][key]


def mean_dice(summary: dict[str, Any]) -> float:
    return statistics.mean(stat(summary, f"dice/{c}")["mean"] for c in CLASSES)


def learning_curve(run: Path) -> dict[str, Any]:
    """Validation Dice per step (mean and per class) and the last trained step, from ``logs/metrics.csv``."""
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    val = [{"step": int(r["step"]) + 1, "dice": float(r["val/dice"]),
            **{c: float(r[f"val/dice_{c}"]) for c in CLASSES}} for r in rows if r.get("val/dice")]
    best = max(val, key=lambda p: p["dice"])["step"] if val else None
    return {"val": val, "steps": max(int(r["step"]) + 1 for r in rows), "best_step": best}


def step_times(run: Path) -> dict[str, float] | None:
    """Training time from the TensorBoard event times: median seconds per step, and busy wall time.

    Steps are logged every few steps; intervals longer than 10x the median (validation, restarts between
    sessions) are left out of the busy time.
    """
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    points: dict[int, float] = {}
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss_step" in acc.Tags()["scalars"]:
            points.update({e.step: e.wall_time for e in acc.Scalars("train/loss_step")})
    steps = sorted(points)
    per_step = [(points[b] - points[a]) / (b - a) for a, b in zip(steps, steps[1:]) if b > a]
    if not per_step:
        return None
    median = statistics.median(per_step)
    busy = sum((points[b] - points[a]) for a, b in zip(steps, steps[1:])
               if b > a and (points[b] - points[a]) / (b - a) < 10 * median)
    return {"median_step_seconds": median, "busy_hours": busy / 3600}


def explain_auc(model: Path, images: list[str], refs: Path, work: Path, cases: int) -> dict[str, Any]:
    """Mean AUC over ``cases`` held-out cases of every (block, component) map for each hippocampus class."""
    per: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for image in images[:cases]:
        name = Path(image).name
        out = work / name.removesuffix(".nii.gz")
        factorseg("explain", "-m", str(model), "-i", image, "--label", str(refs / name), "-o", str(out),
                  "--overwrite", "--no-progress")
        for row in csv.DictReader((out / "overlap.csv").open()):
            if row["auc"] not in ("", "nan"):
                per[(row["block"], int(row["component"]), row["label"])].append(float(row["auc"]))
    values = {"1": "Anterior", "2": "Posterior"}
    table = [{"block": b, "component": k, "label": values.get(lab, lab), "auc_mean": statistics.mean(v),
              "auc_std": statistics.stdev(v) if len(v) > 1 else 0.0, "cases": len(v)}
             for (b, k, lab), v in sorted(per.items())]
    return {"cases": min(cases, len(images)), "components": table}


def train_run(model: str, fold: int, run: Path, data: Path, args: argparse.Namespace) -> None:
    """Train (or resume) one model on one fold."""
    if (run / "checkpoints" / "last.ckpt").exists():
        train_args = ["train", "-d", str(data), "-o", str(run), "--resume", "--no-progress"]
    else:
        recipe, overrides = RECIPES[model]
        train_args = ["train", "-d", str(data), "-o", str(run), "--recipe", recipe, "--fold", str(fold),
                      "--no-progress", *(f"-s{o}" for o in overrides)]
        if args.epochs:
            train_args += ["--epochs", str(args.epochs)]
        if args.steps_per_epoch:
            train_args += ["--steps-per-epoch", str(args.steps_per_epoch)]
        if args.max_minutes:
            train_args += [f"-strain.max_minutes={args.max_minutes}"]
        if args.val_interval:
            train_args += ["--val-interval", str(args.val_interval)]
    factorseg(*train_args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="campaign folder: OUT/MODEL/foldK per run")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(RECIPES))
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (new runs only)")
    parser.add_argument("--steps-per-epoch", type=int, help="override the recipe's steps per epoch (new runs only)")
    parser.add_argument("--val-interval", type=int, help="override the recipe's epochs between validations (new runs only)")
    parser.add_argument("--max-minutes", type=float, help="hard wall-clock stop of each training (train.max_minutes; new runs only)")
    parser.add_argument("--results", type=Path, help="results file (default OUT/results.json)")
    parser.add_argument("--predict-device", default="cpu", help="device of factorseg predict (cpu, cuda)")
    parser.add_argument("--eval-only", action="store_true", help="score the runs as they are; train nothing")
    parser.add_argument("--nmf-iters", nargs="*", type=int, default=[5, 3, 2, 1, 0],
                        help="test-time NMF iterations to score the Factorizers with (none: skip)")
    parser.add_argument("--explain-cases", type=int, default=5, help="held-out cases scored per component")
    parser.add_argument("--tta", action="store_true", help="also score every run with flip test-time augmentation")
    parser.add_argument("--plot", type=Path, help="write the validation-Dice learning curves (PNG) here")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"hippocampus data not found at {args.data}")
    results: dict[str, Any] = {
        "hardware": {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
                     "threads": torch.get_num_threads(),
                     "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "allocator": os.environ.get("GLIBC_TUNABLES", "factorseg default"), "runs": []}
    results_path = args.results or args.out / "results.json"
    if results_path.exists():  # keep the scores of runs not scored this time (one model after the other)
        results["runs"] = json.loads(results_path.read_text())["runs"]
    for model in args.models:
        for fold in args.folds:
            run = args.out / model / f"fold{fold}"
            if not args.eval_only:
                train_run(model, fold, run, args.data, args)
            if not (run / "model_best.pt").exists():
                print(f"skipping {model} fold {fold}: no {run / 'model_best.pt'}", flush=True)
                continue
            images, refs = held_out(run, fold, args.data, run / "eval")
            dev = args.predict_device
            entry = {"model": model, "fold": fold, "curve": learning_curve(run), "timing": step_times(run),
                     "eval": predict_and_score(run / "model_best.pt", images, refs, run / "eval", [], dev)}
            if args.tta:
                entry["eval_tta"] = predict_and_score(run / "model_best.pt", images, refs, run / "eval_tta", ["--tta"], dev)
            factorizer = model.startswith("swin_factorizer")
            if factorizer and args.nmf_iters:
                entry["nmf_iters"] = {
                    n: predict_and_score(run / "model_best.pt", images, refs, run / f"eval_nmf{n}",
                                         ["--nmf-iters", str(n)], dev)
                    for n in args.nmf_iters
                }
            if factorizer and args.explain_cases:
                entry["explain"] = explain_auc(run / "model_best.pt", images, refs, run / "explain", args.explain_cases)
            results["runs"] = [r for r in results["runs"] if (r["model"], r["fold"]) != (model, fold)] + [entry]
            results_path.write_text(json.dumps(results, indent=2))
    print_tables(results)
    if args.plot:
        plot_curves(results, args.plot)


def print_tables(results: dict[str, Any]) -> None:
    print("\n| model | fold | steps trained | best (scored) at step | class | Dice | HD95 (mm) | step (s, median) "
          "| train time (h) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in results["runs"]:
        s = run["eval"]["summary"]
        timing = run["timing"] or {}
        for c in CLASSES:
            d, h = stat(s, f"dice/{c}"), stat(s, f"hd95/{c}")
            print(f"| {run['model']} | {run['fold']} | {run['curve']['steps']} | {run['curve']['best_step']} | {c} "
                  f"| {d['mean']:.3f} ± {d['std']:.3f} "
                  f"| {h['mean']:.2f} ± {h['std']:.2f} | {timing.get('median_step_seconds', float('nan')):.2f} "
                  f"| {timing.get('busy_hours', float('nan')):.2f} |")
        print(f"| {run['model']} | {run['fold']} | {run['curve']['steps']} | {run['curve']['best_step']} | mean "
              f"| {mean_dice(s):.3f} | | | |")
        if "eval_tta" in run:
            t = run["eval_tta"]["summary"]
            print(f"| {run['model']} + flip TTA | {run['fold']} | | | mean (anterior, posterior) | {mean_dice(t):.3f} "
                  f"({stat(t, 'dice/Anterior')['mean']:.3f}, {stat(t, 'dice/Posterior')['mean']:.3f}) | | | |")
    for run in results["runs"]:
        if "nmf_iters" in run:
            print(f"\nTest-time NMF iterations, {run['model']} fold {run['fold']} ({run['eval']['cases']} cases):\n")
            print("| NMF iterations | mean Dice | Dice anterior | Dice posterior | predict time per case (s) | load |")
            print("|---|---|---|---|---|---|")
            for n, res in run["nmf_iters"].items():
                s = res["summary"]
                print(f"| {n} | {mean_dice(s):.3f} | {stat(s, 'dice/Anterior')['mean']:.3f} | "
                      f"{stat(s, 'dice/Posterior')['mean']:.3f} | {res['predict_seconds'] / res['cases']:.2f} | "
                      f"{res['load_average'][0]:.2f}-{res['load_average'][1]:.2f} |")
        if "explain" in run:
            rows = run["explain"]["components"]
            print(f"\nNMF components most specific to each class ({run['explain']['cases']} cases, mean AUC):\n")
            print("| class | block | component | AUC |")
            print("|---|---|---|---|")
            for c in CLASSES:
                for row in sorted((r for r in rows if r["label"] == c), key=lambda r: -r["auc_mean"])[:3]:
                    print(f"| {c} | {row['block']} | {row['component']} | {row['auc_mean']:.3f} ± {row['auc_std']:.3f} |")


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Validation Dice (mean of both classes) against training step, one line per model and fold."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for run in results["runs"]:
        val = run["curve"]["val"]
        ax.plot([p["step"] for p in val], [p["dice"] for p in val], marker="o", markersize=3,
                label=f"{run['model']} fold {run['fold']}")
    ax.set_xlabel("training step (batch 2 x 2 crops of 40x56x40)")
    ax.set_ylabel("validation Dice (mean of anterior, posterior)")
    ax.set_title("MSD Task04 hippocampus, fold 0 validation cases")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
