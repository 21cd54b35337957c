"""nnU-Net v2 on MSD hippocampus: nnU-Net's own U-Net vs ``nnUNetTrainerFactorizer``, same plans, split, iterations.

Three steps, each resumable (run folders live wherever ``--root`` points, outside the work tree):

    python -m benchmarks.nnunet_hippocampus prepare --data ../shared/data/hippocampus --root ~/runs/nnunet \\
        --splits ~/runs/hippo_paper/swin_factorizer/fold0/splits.json --batch-size 2
    taskset -c 0 python -m benchmarks.nnunet_hippocampus train --root ~/runs/nnunet -tr nnUNetTrainer_10epochs
    taskset -c 1 python -m benchmarks.nnunet_hippocampus train --root ~/runs/nnunet -tr nnUNetTrainerFactorizer_AdamW_10epochs
    python -m benchmarks.nnunet_hippocampus report --root ~/runs/nnunet

``prepare`` links the MSD folder into nnU-Net's raw layout (``CASE_0000.nii.gz``; the images are not
copied), plans and preprocesses ``3d_fullres``, installs factorseg's split as ``splits_final.json`` (so
fold 0 is factorseg's fold 0) and, with ``--batch-size``, writes a plans variant ``nnUNetPlans_b<N>``
that differs from nnU-Net's plans only in the batch size (both trainers then read it). ``train`` runs
``nnUNetv2_train`` in this process with as many torch threads as the process may use (nnU-Net's CPU
path asks for one per core of the machine, which oversubscribes a ``taskset``-pinned run). ``report``
prints fold 0's validation Dice per class of each trained model (nnU-Net's final validation: sliding
window with mirroring, on the full cases) and writes ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

DATASET = "Dataset004_Hippocampus"


def _env(root: Path) -> None:
    """nnU-Net's folders under ``root`` and its settings for a one-core CPU run, in this process's environment."""
    os.environ.update({
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "pre"),
        "nnUNet_results": str(root / "res"),
        "nnUNet_n_proc_DA": "0",  # augmentation in the training process: no worker competing for the core
        "nnUNet_def_n_proc": "1",
        "nnUNet_compile": "0",
    })


def _plans_name(batch_size: int | None) -> str:
    return "nnUNetPlans" if batch_size is None else f"nnUNetPlans_b{batch_size}"


def prepare(data: Path, root: Path, splits: Path | None, batch_size: int | None) -> None:
    _env(root)
    meta = json.loads((data / "dataset.json").read_text())
    raw = root / "raw" / DATASET
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    cases = sorted(p.name[: -len(".nii.gz")] for p in (data / "imagesTr").glob("*.nii.gz") if not p.name.startswith("."))
    for case in cases:
        for src, dst in (
            (data / "imagesTr" / f"{case}.nii.gz", raw / "imagesTr" / f"{case}_0000.nii.gz"),
            (data / "labelsTr" / f"{case}.nii.gz", raw / "labelsTr" / f"{case}.nii.gz"),
        ):
            if not dst.exists():
                dst.symlink_to(src.resolve())
    labels = {name: int(value) for value, name in meta["labels"].items()}
    dataset_json = {
        "channel_names": {k: v for k, v in meta["modality"].items()},
        "labels": dict(sorted(labels.items(), key=lambda kv: kv[1])),
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": meta.get("name", "Hippocampus"),
    }
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    pre = root / "pre" / DATASET
    if not (pre / "nnUNetPlans.json").exists():
        subprocess.run(
            [str(Path(sys.executable).with_name("nnUNetv2_plan_and_preprocess")), "-d", "4", "-c", "3d_fullres", "-np", "1", "-npfp", "1",
             "--verify_dataset_integrity"],
            check=True,
        )
    if splits is not None:
        shutil.copyfile(splits, pre / "splits_final.json")
    if batch_size is not None:
        plans = json.loads((pre / "nnUNetPlans.json").read_text())
        plans["plans_name"] = _plans_name(batch_size)
        plans["configurations"]["3d_fullres"]["batch_size"] = batch_size  # data_identifier kept: same data
        (pre / f"{plans['plans_name']}.json").write_text(json.dumps(plans, indent=1))
    print(f"prepared {len(cases)} cases under {root}")


def train(root: Path, trainer: str, plans: str, fold: int) -> None:
    _env(root)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else multiprocessing.cpu_count()
    multiprocessing.cpu_count = lambda: threads  # what nnU-Net's CPU path gives torch.set_num_threads
    import nnunetv2.run.run_training as run_training
    from nnunetv2.training.nnUNetTrainer.variants.training_length import nnUNetTrainer_Xepochs

    import factorseg.nnunet.trainers as ours

    # nnU-Net imports every module of its trainer folder until it meets the name; without an importable
    # torchvision (CPU torch from PyPI, see docs/nnunet.md) its Primus trainers fail to import first, so the
    # trainers this benchmark uses are looked up here, everything else as nnU-Net does.
    known = {name: obj for module in (nnUNetTrainer_Xepochs, ours) for name, obj in vars(module).items()
             if isinstance(obj, type)}
    search = run_training.recursive_find_trainer_class_by_name
    run_training.recursive_find_trainer_class_by_name = lambda name, *a, **k: known.get(name) or search(name, *a, **k)

    out = root / "res" / DATASET / f"{trainer}__{plans}__3d_fullres" / f"fold_{fold}"
    resume = ["--c"] if (out / "checkpoint_latest.pth").exists() else []
    sys.argv = ["nnUNetv2_train", "4", "3d_fullres", str(fold), "-tr", trainer, "-p", plans, "-device", "cpu", *resume]
    run_training.run_training_entry()


def report(root: Path) -> None:
    """nnU-Net's fold Dice of every trained run, and factorseg's metrics (Dice, HD95) of its validation masks."""
    labels = root / "raw" / DATASET / "labelsTr"
    rows = {}
    for summary in sorted((root / "res" / DATASET).glob("*/fold_*/validation/summary.json")):
        result = json.loads(summary.read_text())
        per_class = {k: round(v["Dice"], 4) for k, v in result["mean"].items()}
        name = f"{summary.parents[2].name}/{summary.parents[1].name}"
        masks = summary.parent
        refs = masks.parent / "validation_refs"  # the references of exactly the validated cases
        refs.mkdir(exist_ok=True)
        for mask in masks.glob("*.nii.gz"):
            if not (refs / mask.name).exists():
                (refs / mask.name).symlink_to((labels / mask.name).resolve())
        scores = masks.parent / "validation_factorseg"
        subprocess.run([sys.executable, "-m", "factorseg", "evaluate", "-p", str(masks), "-r", str(refs),
                        "--labels-from", str(root / "raw" / DATASET), "--metrics", "dice", "hd95",
                        "-o", str(scores)], check=True, stdout=subprocess.DEVNULL)
        rows[name] = {"mean_dice": round(result["foreground_mean"]["Dice"], 4), "per_class": per_class,
                      "factorseg_evaluate": json.loads((scores / "summary.json").read_text())}
        print(f"{name}: Dice {rows[name]['mean_dice']:.4f}  per class {per_class}")
    (root / "report.json").write_text(json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--splits", type=Path)
    p.add_argument("--batch-size", type=int)
    t = sub.add_parser("train")
    t.add_argument("--root", type=Path, required=True)
    t.add_argument("-tr", "--trainer", required=True)
    t.add_argument("-p", "--plans", default="nnUNetPlans_b2")
    t.add_argument("--fold", type=int, default=0)
    r = sub.add_parser("report")
    r.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    if args.cmd == "prepare":
        prepare(args.data, args.root.expanduser(), args.splits, args.batch_size)
    elif args.cmd == "train":
        train(args.root.expanduser(), args.trainer, args.plans, args.fold)
    else:
        report(args.root.expanduser())


if __name__ == "__main__":
    main()
