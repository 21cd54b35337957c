"""Hippocampus (MSD Task04) benchmark: train, predict and evaluate with the normal CLI, per model and fold.

Run (a documented subset of folds when the budget does not allow five):
    .venv/bin/python benchmarks/hippocampus.py --out runs/hippo_bench --folds 0 \
        --models swin_factorizer dynunet segresnet --epochs 30 --steps-per-epoch 100

Every model gets the same data, augmentation, splits, schedule and seed (recipes ``hippocampus``,
``hippocampus_dynunet``, ``hippocampus_segresnet``). Held-out cases are the fold's validation cases,
predicted by ``factorseg predict`` and scored by ``factorseg evaluate``. For the Factorizer it also
measures the test-time NMF iteration trade-off (Dice and prediction time for 5, 3, 2, 1, 0 iterations
on the same trained model). Results: ``OUT/results.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RECIPES = {"swin_factorizer": "hippocampus", "dynunet": "hippocampus_dynunet", "segresnet": "hippocampus_segresnet"}
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hippocampus"


def factorseg(*args: str) -> None:
    """Run the CLI as a user would; stop on failure."""
    cmd = [sys.executable, "-m", "factorseg.cli", *args]
    print("$ factorseg " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def held_out(run: Path, fold: int, data: Path, work: Path) -> tuple[list[str], Path]:
    """Image paths of the fold's validation cases and a folder of their reference labels."""
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


def predict_and_score(model: Path, images: list[str], refs: Path, out: Path, extra: list[str]) -> dict:
    preds, scores = out / "pred", out / "scores"
    start = time.perf_counter()
    factorseg("predict", "-m", str(model), "-i", *images, "-o", str(preds), "--no-progress", "--overwrite", *extra)
    seconds = time.perf_counter() - start
    factorseg("evaluate", "-p", str(preds), "-r", str(refs), "--labels-from", str(model), "-o", str(scores))
    summary = json.loads((scores / "summary.json").read_text())
    return {"summary": summary, "predict_seconds": seconds, "cases": len(images)}


def mean_of(summary: dict, key: str) -> float:
    return float(summary["metrics"][key]["mean"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--steps-per-epoch", type=int, help="override the recipe's steps per epoch")
    parser.add_argument("--max-minutes", type=float, help="hard wall-clock stop per training run")
    parser.add_argument("--nmf-iters", nargs="+", type=int, default=[5, 3, 2, 1, 0])
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"hippocampus data not found at {args.data}")
    results = {"hardware": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
               "runs": []}
    for model in args.models:
        for fold in args.folds:
            run = args.out / model / f"fold{fold}"
            train_args = ["train", "-d", str(args.data), "-o", str(run), "--recipe", RECIPES[model],
                          "--fold", str(fold), "--no-progress"]
            if args.epochs:
                train_args += ["--epochs", str(args.epochs)]
            if args.steps_per_epoch:
                train_args += ["--steps-per-epoch", str(args.steps_per_epoch)]
            if args.max_minutes:
                train_args += ["-s", f"train.max_minutes={args.max_minutes}"]
            if (run / "checkpoints" / "last.ckpt").exists():
                train_args = ["train", "-d", str(args.data), "-o", str(run), "--resume", "--no-progress"]
            start = time.perf_counter()
            factorseg(*train_args)
            train_seconds = time.perf_counter() - start
            images, refs = held_out(run, fold, args.data, run / "eval")
            entry = {"model": model, "fold": fold, "train_seconds": train_seconds,
                     "run_info": json.loads((run / "run_info.json").read_text()),
                     "eval": predict_and_score(run / "model_best.pt", images, refs, run / "eval", [])}
            if model.endswith("factorizer"):
                entry["nmf_iters"] = {
                    n: predict_and_score(run / "model_best.pt", images, refs, run / f"eval_nmf{n}", ["--nmf-iters", str(n)])
                    for n in args.nmf_iters
                }
            results["runs"].append(entry)
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print_tables(results)


def print_tables(results: dict) -> None:
    print("\n| model | folds | Dice anterior | Dice posterior | mean Dice | HD95 anterior (mm) | HD95 posterior (mm) | train min/fold |")
    print("|---|---|---|---|---|---|---|---|")
    by_model: dict[str, list[dict]] = {}
    for run in results["runs"]:
        by_model.setdefault(run["model"], []).append(run)
    for model, runs in by_model.items():
        def agg(key: str) -> str:
            values = [mean_of(r["eval"]["summary"], key) for r in runs]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):.3f}{spread}"
        dice = [(mean_of(r["eval"]["summary"], "dice/Anterior") + mean_of(r["eval"]["summary"], "dice/Posterior")) / 2
                for r in runs]
        minutes = statistics.mean(r["train_seconds"] for r in runs) / 60
        print(f"| {model} | {','.join(str(r['fold']) for r in runs)} | {agg('dice/Anterior')} | {agg('dice/Posterior')} | "
              f"{statistics.mean(dice):.3f} | {agg('hd95/Anterior')} | {agg('hd95/Posterior')} | {minutes:.1f} |")
    for run in results["runs"]:
        if "nmf_iters" not in run:
            continue
        print(f"\nTest-time NMF iterations, {run['model']} fold {run['fold']} ({run['eval']['cases']} cases):\n")
        print("| NMF iterations | mean Dice | prediction time (s) |")
        print("|---|---|---|")
        for n, res in run["nmf_iters"].items():
            s = res["summary"]
            mean = (mean_of(s, "dice/Anterior") + mean_of(s, "dice/Posterior")) / 2
            print(f"| {n} | {mean:.3f} | {res['predict_seconds']:.1f} |")


if __name__ == "__main__":
    main()
