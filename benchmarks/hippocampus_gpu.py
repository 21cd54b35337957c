"""The hippocampus campaign on one GPU in one device run: every run at once, equal steps, results packed.

    python -m benchmarks.hippocampus_gpu --data DATA --out /tmp/hippo --minutes 6 --pack "$OUT"

1. Probe: every run trains ``--probe-steps`` steps at the same time (as they will run together); the
   slowest run's median step time (from its TensorBoard event times) sets one number of epochs that fits
   ``--minutes`` for all of them, so every model gets the same steps.
2. Train and score: every run goes through ``benchmarks/hippocampus.py`` at the same time (train with the
   recipe, predict the fold's held-out cases, evaluate; the test-time NMF-iteration table and the
   component AUCs for fold-0 Factorizers), each with its own results file and a hard stop at
   ``--minutes`` + 1 (``train.max_minutes``).
3. Merge: ``OUT/results.json``, the tables (stdout and ``tables.md``), the learning curves (``curves.png``);
   with ``--pack DIR`` these and two tarballs (every run's config and logs; the Factorizers' bundles)
   are copied to DIR (a device run's ``$OUT``: at most 8 files).

Each child process gets ``--threads`` torch threads (the GPU does the arithmetic; the CPU augments).
On a CPU, ``--device cpu --smoke`` runs the same three phases with two runs of a few steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.hippocampus import DATA, RECIPES, plot_curves, print_tables, step_times

#: (model, fold) of the full campaign: the three models on fold 0, the wide Factorizer, four more folds.
CAMPAIGN = (("swin_factorizer", 0), ("swin_factorizer_wide", 0), ("segresnet", 0), ("dynunet", 0),
            *(("swin_factorizer", k) for k in (1, 2, 3, 4)))
SMOKE = (("swin_factorizer", 0), ("segresnet", 0))
STEPS_PER_EPOCH = 100  # the recipes'


def fit_epochs(step_seconds: Sequence[float], minutes: float, steps_per_epoch: int, margin: float = 1.3) -> int:
    """Epochs of ``steps_per_epoch`` steps that the slowest run fits in ``minutes`` (``margin`` for validation
    and start-up)."""
    if not step_seconds or minutes <= 0:
        raise ValueError("need step times and a positive budget")
    return max(1, math.floor(minutes * 60 / (margin * max(step_seconds) * steps_per_epoch)))


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def _wait(procs: dict[str, subprocess.Popen], what: str) -> None:
    failed = [name for name, proc in procs.items() if proc.wait() != 0]
    if failed:
        raise SystemExit(f"{what} failed for {', '.join(failed)} (logs beside the runs)")


def probe(runs: Sequence[tuple[str, int]], data: Path, out: Path, steps: int, threads: int) -> dict[str, float]:
    """Median seconds per step of every run while all of them train together (two epochs of ``steps / 2``:
    logged steps on both sides of an epoch's end, no validation)."""
    procs = {}
    for model, fold in runs:
        run = out / "probe" / f"{model}_fold{fold}"
        shutil.rmtree(run, ignore_errors=True)
        run.parent.mkdir(parents=True, exist_ok=True)
        recipe, overrides = RECIPES[model]
        cmd = [sys.executable, "-m", "factorseg", "train", "-d", str(data), "-o", str(run), "--recipe", recipe,
               "--fold", str(fold), "--epochs", "2", "--steps-per-epoch", str(max(2, steps // 2)), "--val-interval", "3",
               "--no-progress", *(f"-s{o}" for o in overrides)]
        procs[run.name] = subprocess.Popen(cmd, env=_env(threads), stdout=(out / "probe" / f"{run.name}.log").open("w"),
                                           stderr=subprocess.STDOUT)
    _wait(procs, "probe")
    times = {}
    for name in procs:
        timing = step_times(out / "probe" / name)
        if timing is None:
            raise SystemExit(f"no step times in the probe of {name}")
        times[name] = timing["median_step_seconds"]
    return times


def campaign(runs: Sequence[tuple[str, int]], data: Path, out: Path, epochs: int, steps: int, minutes: float,
             device: str, threads: int, explain_cases: int, nmf_iters: Sequence[int], val_interval: int) -> dict:
    """Train and score every run at once through benchmarks/hippocampus.py; the merged results."""
    procs, files = {}, []
    for model, fold in runs:
        name = f"{model}_fold{fold}"
        results = out / f"results_{name}.json"
        results.unlink(missing_ok=True)
        first_factorizer = model.startswith("swin_factorizer") and fold == 0
        cmd = [sys.executable, "-m", "benchmarks.hippocampus", "--out", str(out), "--data", str(data),
               "--models", model, "--folds", str(fold), "--epochs", str(epochs), "--steps-per-epoch", str(steps),
               "--max-minutes", f"{minutes + 1:g}", "--val-interval", str(val_interval), "--results", str(results),
               "--predict-device", device, "--explain-cases", str(explain_cases if first_factorizer else 0),
               "--nmf-iters", *([str(n) for n in nmf_iters] if first_factorizer else [])]
        procs[name] = subprocess.Popen(cmd, env=_env(threads), stdout=(out / f"{name}.log").open("w"),
                                       stderr=subprocess.STDOUT)
        files.append(results)
    _wait(procs, "training or scoring")
    merged: dict = {"runs": []}
    for path in files:
        part = json.loads(path.read_text())
        merged = {**part, "runs": merged["runs"] + part["runs"]}
    return merged


def pack(out: Path, runs: Sequence[tuple[str, int]], dest: Path) -> None:
    """results.json, tables.md, curves.png and two tarballs (logs; Factorizer bundles) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "tables.md", "curves.png", "plan.json"):
        if (out / name).exists():
            shutil.copy2(out / name, dest / name)
    with tarfile.open(dest / "logs.tar.gz", "w:gz") as tar:
        for log in sorted(out.glob("*.log")) + sorted((out / "probe").glob("*.log")):
            tar.add(log, arcname=str(log.relative_to(out)))
        for model, fold in runs:
            run = out / model / f"fold{fold}"
            for rel in ("config.yaml", "splits.json", "logs/metrics.csv"):
                if (run / rel).exists():
                    tar.add(run / rel, arcname=f"{model}/fold{fold}/{rel}")
    with tarfile.open(dest / "factorizer_bundles.tar", "w") as tar:
        for model, fold in runs:
            bundle = out / model / f"fold{fold}" / "model_best.pt"
            if model.startswith("swin_factorizer") and bundle.exists():
                tar.add(bundle, arcname=f"{model}/fold{fold}/model_best.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, required=True, help="campaign folder (runs, results)")
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget of every run")
    parser.add_argument("--probe-steps", type=int, default=40)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for the smoke test")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each child process")
    parser.add_argument("--explain-cases", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="two runs of a few steps (a CPU check of the script)")
    parser.add_argument("--pack", type=Path, help="copy the results and tarballs here (e.g. a device run's $OUT)")
    args = parser.parse_args()
    if not (args.data / "dataset.json").exists():
        raise SystemExit(f"hippocampus data not found at {args.data}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: use --device cpu --smoke on a CPU")
    runs = SMOKE if args.smoke else CAMPAIGN
    steps = 2 if args.smoke else STEPS_PER_EPOCH
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    times = probe(runs, args.data, args.out, 4 if args.smoke else args.probe_steps, args.threads)
    epochs = 1 if args.smoke else fit_epochs(list(times.values()), args.minutes, steps)
    plan = {"probe_step_seconds": times, "epochs": epochs, "steps_per_epoch": steps, "steps": epochs * steps,
            "minutes": args.minutes, "probe_seconds": time.perf_counter() - start, "device": args.device}
    (args.out / "plan.json").write_text(json.dumps(plan, indent=1))
    print(f"probe: {json.dumps(times)} -> {epochs} epochs of {steps} steps for every run", flush=True)
    results = campaign(runs, args.data, args.out, epochs, steps, args.minutes, args.device, args.threads,
                       0 if args.smoke else args.explain_cases, [0] if args.smoke else [5, 3, 2, 1, 0],
                       1 if args.smoke else 5)
    results["plan"] = plan
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    with (args.out / "tables.md").open("w") as f, contextlib.redirect_stdout(f):
        print_tables(results)
    print((args.out / "tables.md").read_text())
    plot_curves(results, args.out / "curves.png")
    if args.pack:
        pack(args.out, runs, args.pack)
    print(f"campaign done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
