"""The ``factorseg`` command: train, predict, evaluate, explain, export and demo.

Problems with user input print one line (``factorseg: error: ...``) and exit with status 2; known failures of
the machine (out of memory, disk full, read-only or forbidden output) print one line and exit with status 1;
``--debug`` shows the traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, TextIO

from factorseg import __version__
from factorseg.errors import InputError, InputWarning

EPILOG = "Docs: README.md. Every command prints its own help: factorseg COMMAND --help."


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``factorseg: error: ...``, exit status 2), like every other refusal."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"factorseg: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default (where it has one and the help does not already say it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower() or not action.option_strings or default is None or default is False
            or (isinstance(default, list | tuple) and not default) or default is argparse.SUPPRESS
            or isinstance(action, argparse._VersionAction)
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown})"


def _fold(value: str) -> int | str:
    """``--fold``: a fold number or ``all``."""
    if value.strip().lower() == "all":
        return "all"
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold number or 'all', got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a fold number >= 0 or 'all', got {value!r}")
    return number


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model on a NIfTI dataset",
        description="Train a model with a recipe (YAML) on a dataset folder in any supported layout "
        "(MSD, BraTS 2021/2023, BRATS 2015, ISLES'22, nnU-Net raw, datalist.json). Writes checkpoints, "
        "model_best.pt / model_last.pt bundles, config.yaml, splits.json, CSV and TensorBoard logs to --output.",
        epilog="Example: factorseg train -d ../shared/data/hippocampus -o runs/hippo --recipe hippocampus --epochs 20",
    )
    p.add_argument("-d", "--data", required=True, type=Path, help="dataset folder (or datalist.json)")
    p.add_argument("-o", "--output", required=True, type=Path, help="run folder (created)")
    p.add_argument("-r", "--recipe", default="default",
                   help="shipped recipe name or a YAML file (factorseg recipes lists them)")
    p.add_argument("--format", help="dataset layout, if auto-detection is not wanted (default: detected)")
    p.add_argument("--labels", help="label convention (e.g. brats2021, msd_task01, brats2015, isles22) "
                   "(default: the dataset's)")
    p.add_argument("--model", help="registry model name (e.g. swin_factorizer, segresnet, dynunet); another "
                   "architecture than the recipe's starts from its own defaults (default: the recipe's)")
    p.add_argument("--fold", type=_fold, help="cross-validation fold to hold out, or 'all' to train on every case "
                   "without validation (the result is then model_last.pt) (default: the recipe's, 0)")
    p.add_argument("--folds", type=int, help="number of cross-validation folds (default: the recipe's, 5)")
    p.add_argument("--epochs", type=int, help="number of epochs (default: the recipe's)")
    p.add_argument("--steps-per-epoch", type=int, help="training iterations per epoch (default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="volumes per batch (default: the recipe's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    p.add_argument("--seed", type=int, help="random seed (default: the recipe's, 0)")
    p.add_argument("--val-interval", type=int, help="epochs between validations (default: the recipe's)")
    p.add_argument("--num-workers", type=int, help="data-loading processes (default: the recipe's)")
    p.add_argument("--accelerator", help="cpu, gpu or auto (default: the recipe's, auto)")
    p.add_argument("--devices", type=int, help="devices per node (>1 uses DDP) (default: the recipe's, 1)")
    p.add_argument("--num-nodes", type=int, help="machines (DDP; works under torchrun and SLURM) "
                   "(default: the recipe's, 1)")
    p.add_argument("--precision", help="auto, 32-true, bf16-mixed or 16-mixed (default: the recipe's, auto)")
    p.add_argument("-s", "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any recipe value, e.g. -s model.nmf_iters=3 -s transforms.roi_size=[64,64,64] "
                   "(factorseg recipes lists the keys)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint "
                   "(its config.yaml; -d is given again)")
    p.add_argument("--init-from", metavar="MODEL", help="fine-tune: start from the weights of a model bundle (.pt), "
                   "a Lightning checkpoint of factorseg train (.ckpt) or a shipped model name. Rules: the same "
                   "architecture (model name and every setting that shapes a weight: the state-dict keys and shapes "
                   "must equal the source's) and the same number of input channels; a mismatch is refused naming "
                   "the first differing key and both shapes. Settings that shape no weight (nmf_iters, dropout) and "
                   "every train setting may differ. config.yaml records it as train.init_from. Not with --resume "
                   "(the checkpoint holds the weights)")
    p.add_argument("--init-from-heads", choices=["load", "skip"], help="with --init-from: 'load' the source's output "
                   "head(s) too (out_channels must match), or 'skip' them: the heads start fresh and out_channels "
                   "may differ (another label set) (default: the recipe's, load)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(func=_cmd_train)


def _train_overrides(args: argparse.Namespace) -> list[str]:
    pairs = [
        ("data.format", args.format), ("data.labels", args.labels),
        ("data.fold", args.fold), ("data.folds", args.folds), ("train.epochs", args.epochs),
        ("train.steps_per_epoch", args.steps_per_epoch), ("train.batch_size", args.batch_size),
        ("train.lr", args.lr), ("train.seed", args.seed), ("train.val_interval", args.val_interval),
        ("train.num_workers", args.num_workers), ("train.accelerator", args.accelerator),
        ("train.devices", args.devices), ("train.num_nodes", args.num_nodes), ("train.precision", args.precision),
        ("train.init_from_heads", args.init_from_heads),
    ]
    if args.init_from is not None:  # quoted: a path is text, whatever YAML would make of it
        pairs.append(("train.init_from", json.dumps(args.init_from)))
    return [f"{k}={v}" for k, v in pairs if v is not None] + list(args.set)


def _train_config(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """The run config the options make: the recipe (or with --resume the run's config.yaml), the model switch
    and the overrides, with the options that exclude each other refused."""
    from factorseg.config import apply_overrides, load_recipe, switch_model

    init_from = args.init_from is not None or any(s.split("=", 1)[0].strip() == "train.init_from" for s in args.set)
    if args.resume and init_from:
        raise InputError("--resume continues from the run's own checkpoint; --init-from only starts a new run "
                         "(drop one of them)")
    if args.init_from_heads is not None and not init_from:
        raise InputError("--init-from-heads needs --init-from MODEL")
    if args.resume:
        saved = args.output / "config.yaml"
        if not saved.exists():
            raise InputError(f"--resume: {saved} not found; is {args.output} a factorseg run?")
        cfg = load_recipe(saved)
    else:
        cfg = load_recipe(args.recipe)
    if args.model:
        cfg = switch_model(cfg, args.model)
    return apply_overrides(cfg, _train_overrides(args))


def _cmd_train(args: argparse.Namespace) -> int:
    from factorseg.training import train

    result = train(_train_config(args), args.data, args.output, resume=args.resume, progress=not args.no_progress)
    if result.best_model is not None:
        print(f"best model: {result.best_model}")
    else:
        print(f"model: {result.last_model} (the last epoch's; with --fold all nothing was validated)")
    for key, value in sorted(result.metrics.items()):
        print(f"{key}: {value:.4f}")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="segment scans with trained model(s)",
        description="Segment NIfTI scans. Writes one mask per case (<id>.nii.gz) in the input's own geometry "
        "(shape, affine, orientation) with the dataset's own label values.",
        epilog="Example: factorseg predict -m runs/hippo/model_best.pt -i scans/ -o masks/ --tta",
    )
    p.add_argument("-m", "--model", action="append", required=True,
                   help="model bundle (.pt), Lightning checkpoint (.ckpt), exported .onnx (with --backend onnxruntime) "
                   "or a shipped model name; repeat for an ensemble")
    p.add_argument("-i", "--input", nargs="+", required=True, type=Path,
                   help="NIfTI files (one case's channel files in model order are one case), folders of them "
                   "(nnU-Net _XXXX channel suffixes, dropped from the output names), or a dataset folder")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--overlap", type=float, help="sliding-window overlap in [0, 1) (default: the model's)")
    p.add_argument("--blend", choices=["gaussian", "constant"], help="window blending (default: the model's)")
    p.add_argument("--sw-batch-size", type=int, help="windows per forward pass (default: the model's)")
    p.add_argument("--tta", action="store_true", default=None, help="average over all axis flips "
                   "(default: the model's)")
    p.add_argument("--nmf-iters", type=int, help="NMF iterations at test time, fewer = faster "
                   "(default: as trained)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch", help="inference engine")
    p.add_argument("--probabilities", action="store_true", help="also write <id>_probabilities.nii.gz")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)


def _check_options(args: argparse.Namespace, specs: dict[str, object]) -> None:
    """Command-line numbers checked with the config's own types (``factorseg.config.schema``), named as options."""
    for dest, spec in specs.items():
        value = getattr(args, dest)
        if value is None:
            continue
        option = "--" + dest.replace("_", "-")
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            name = f"{option} value {i + 1}" if isinstance(value, list) else option
            spec.check(item, name)  # type: ignore[attr-defined]


def _cmd_predict(args: argparse.Namespace) -> int:
    from factorseg.data.formats import cases_from_paths
    from factorseg.inference.loading import load_model
    from factorseg.inference.pipeline import InferenceOptions, SegmentationPredictor

    _check_inference_caps(args, ["sw_batch_size", "nmf_iters"], caps_only=True)
    options = InferenceOptions(
        overlap=args.overlap, blend=args.blend, sw_batch_size=args.sw_batch_size, tta=args.tta,
        nmf_iters=args.nmf_iters, device=args.device, save_probabilities=args.probabilities, overwrite=args.overwrite,
    )
    predictor = SegmentationPredictor([load_model(m, backend=args.backend) for m in args.model], options)
    cases = cases_from_paths(args.input, len(predictor.channels))
    if not cases:
        raise InputError("no NIfTI cases found in the input")
    written = predictor.predict_to_folder(cases, args.output, progress=not args.no_progress)
    print(f"wrote {len(written)} mask(s) to {args.output}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    from factorseg.evaluation.metrics import ALL_METRICS, DEFAULT_METRICS

    p = sub.add_parser(
        "evaluate", help="score predicted masks against references",
        description="Compare predicted masks with reference masks (matched by file name) per class or BraTS region. "
        "Writes per_case.csv and summary.json and prints a table. Empty-mask conventions follow BraTS and "
        "ISLES'22 (see factorseg.evaluation.metrics).",
        epilog="Example: factorseg evaluate -p masks/ -r labelsTr/ --labels-from runs/hippo/model_best.pt -o scores/",
    )
    p.add_argument("-p", "--pred", required=True, type=Path, help="folder of predicted masks")
    p.add_argument("-r", "--ref", required=True, type=Path, help="folder of reference masks")
    p.add_argument("-o", "--output", type=Path, help="where to write per_case.csv and summary.json")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--labels", help="label convention name (brats2021, brats2023, msd_task01, brats2015, isles22)")
    group.add_argument("--labels-from", help="take the labels from a model bundle, a shipped model name "
                       "(e.g. hippocampus) or a dataset folder")
    p.add_argument("--metrics", nargs="+", choices=ALL_METRICS, default=list(DEFAULT_METRICS), help="metrics")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="surface Dice tolerance in mm")
    p.add_argument("--allow-missing", action="store_true", help="score missing predictions as empty")
    p.add_argument("--num-workers", "--workers", dest="workers", metavar="N", type=int, default=0,
                   help="parallel processes (0 = none)")
    p.set_defaults(func=_cmd_evaluate)


def _labels_from(source: str):  # noqa: ANN202 - returns a LabelSpec
    from factorseg.data.formats import load_dataset
    from factorseg.inference.loading import load_model, shipped_models

    path = Path(source)
    if path.is_dir():
        return load_dataset(path).labels
    if not path.exists() and source not in shipped_models():
        names = ", ".join(sorted(shipped_models())) or "none"
        raise InputError(f"--labels-from {source}: not a model file, a dataset folder or a shipped model name "
                         f"(shipped: {names})")
    return load_model(source, backend="torch").labels


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from factorseg.data.labels import get_label_spec
    from factorseg.evaluation.folders import evaluate_folders

    if not 0 <= args.workers <= 256:
        raise InputError(f"--num-workers must be an integer in [0, 256], got {args.workers}")
    if not (args.nsd_tolerance >= 0 and args.nsd_tolerance < float("inf")):
        raise InputError(f"--nsd-tolerance must be a finite number >= 0 (mm), got {args.nsd_tolerance}")

    labels = get_label_spec(args.labels) if args.labels else _labels_from(args.labels_from)
    result = evaluate_folders(args.pred, args.ref, labels, args.metrics, args.output, args.nsd_tolerance,
                              args.allow_missing, args.workers)
    result.print_table()
    if args.output:
        print(f"wrote {result.per_case_csv} and {result.summary_json}")
    return 0


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="show what the NMF components look at",
        description="Run a Factorizer on one case and write, for chosen blocks, the NMF component maps on the "
        "scan's own grid (4D NIfTI, openable over the scan in 3D Slicer / ITK-SNAP; 16-bit with a scale factor "
        "by default, see --maps-dtype), a PNG montage and components.json. With --label, each component's "
        "overlap (AUC, best Dice) with each label value goes to overlap.csv, the montage shows the components "
        "with the best AUC first, cut through the label's centre. -i and -o are needed except with --list-blocks.",
        epilog="Example: factorseg explain -m runs/hippo/model_best.pt -i case.nii.gz -o explain/ --label case_seg.nii.gz",
    )
    p.add_argument("-m", "--model", required=True, help="model bundle, checkpoint or shipped model name")
    p.add_argument("-i", "--input", nargs="+", type=Path,
                   help="one case: a NIfTI file (4D for several channels) or its channel files in model order")
    p.add_argument("-o", "--output", type=Path, help="output folder")
    p.add_argument("--blocks", nargs="+", help="block names (default: all; --list-blocks prints them)")
    p.add_argument("--list-blocks", action="store_true", help="print the model's NMF block names and exit "
                   "(needs only -m)")
    p.add_argument("--label", type=Path, help="reference mask on the scan grid, for per-component overlap scores")
    p.add_argument("--components", type=int, default=12, help="components per block shown in the montage")
    p.add_argument("--per-component", action="store_true", help="also write one NIfTI per component")
    p.add_argument("--maps-dtype", choices=["uint16", "uint8", "float32"], default="uint16",
                   help="NIfTI storage of the maps: uint16 (within 5e-4 of each component's maximum, a third "
                   "to a half of float32's size), uint8 (within 2e-3 of the largest map value, for viewing) or "
                   "float32 (exact)")
    p.add_argument("--nmf-iters", type=int, help="NMF iterations, fewer = faster (default: as trained)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_explain)


def _check_inference_caps(args: argparse.Namespace, dests: Sequence[str], caps_only: bool = False) -> None:
    """``--sw-batch-size`` / ``--nmf-iters`` against the config's limits: at least 1 / 0 and at most its sanity
    limit, or with ``caps_only`` the upper limit alone (predict's lower bounds: ``InferenceOptions.resolved``)."""
    from factorseg.config import SCHEMA

    inference = SCHEMA["inference"].keys
    for dest in dests:
        value, spec = getattr(args, dest), getattr(inference[dest], "inner", inference[dest])
        option, cap = "--" + dest.replace("_", "-"), getattr(spec, "cap", None)
        if value is None:
            continue
        if not caps_only:
            spec.check(value, option)
        elif cap is not None and value > cap:
            raise InputError(f"{option} must be at most {cap}, got {value}")


def _explain_summary(index: dict, output: Path) -> list[str]:  # type: ignore[type-arg]
    """The lines ``factorseg explain`` ends with: per block its files and, with a label, the best component per
    label region with its AUC (the full index stays in components.json)."""
    extra = ", overlap.csv" if "overlap" in index else ""
    lines = [f"wrote {len(index['blocks'])} block(s) to {output} (index: components.json{extra})"]
    for name, block in index["blocks"].items():
        nifti = output / block["files"]["nifti"]
        size = f", {nifti.stat().st_size / 1e6:.1f} MB" if nifti.exists() else ""
        files = [f"{block['files']['nifti']} ({len(block['components'])} maps{size})", block["files"]["montage"]]
        singles = sum(1 for c in block["components"] if "nifti" in c)
        if singles:
            files.append(f"{singles} per-component NIfTI files")
        line = f"  {name}: {', '.join(files)}"
        best = block.get("best_per_label")
        if best is not None:
            picks = [f"{label}: {entry['name'].split('/', 1)[-1]} (AUC {entry['auc']:.2f})"
                     for label, entry in best.items()]
            line += "; best per label " + (", ".join(picks) if picks else "none (the label regions are empty)")
        lines.append(line)
    return lines


def _cmd_explain(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from factorseg.config import Int
    from factorseg.explain import explain_case, list_blocks
    from factorseg.inference.loading import load_model

    _check_options(args, {"components": Int(1, cap=4096)})
    _check_inference_caps(args, ["nmf_iters"])
    missing = [flag for flag, value in (("-i/--input", args.input), ("-o/--output", args.output)) if not value]
    if missing and not args.list_blocks:
        raise InputError(f"explain needs {' and '.join(missing)} (only --list-blocks goes without them)")
    loaded = load_model(args.model, backend="torch")
    if args.list_blocks:
        print("\n".join(list_blocks(loaded.model)))
        return 0
    with Progress(disable=args.no_progress, transient=True) as bar:
        task = bar.add_task("Explaining", total=None)
        index = explain_case(loaded, args.input, args.output, label=args.label, device=args.device,
                             nmf_iters=args.nmf_iters, blocks=args.blocks, per_component=args.per_component,
                             montage_components=args.components, overwrite=args.overwrite, maps_dtype=args.maps_dtype,
                             progress=lambda step: bar.update(task, description=f"Explaining: {step}"))
    print("\n".join(_explain_summary(index, args.output)))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a trained model to ONNX, TorchScript or a MONAI bundle",
        description="Export a model for deployment. ONNX files run with `factorseg predict --backend "
        "onnxruntime` (the model's config travels in a sidecar JSON); a MONAI bundle (a folder) runs with "
        "`python -m monai.bundle run` and needs `pip install 'factorseg[export]'`.",
        epilog="Example: factorseg export -m runs/hippo/model_best.pt --format onnx -o hippo.onnx; "
        "factorseg export -m hippocampus --format monai-bundle -o hippocampus_bundle",
    )
    p.add_argument("-m", "--model", required=True, help="model bundle, checkpoint or shipped model name")
    p.add_argument("--format", choices=["onnx", "torchscript", "monai-bundle"], default="onnx", help="export format")
    p.add_argument("-o", "--output", required=True, type=Path, help="output file (a folder for monai-bundle)")
    p.add_argument("--nmf-iters", type=int, help="bake this many NMF iterations into the graph (default: as trained)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from factorseg.inference.loading import load_model

    loaded = load_model(args.model, backend="torch")
    if args.format == "monai-bundle":
        from factorseg.inference.monai_bundle import export_monai_bundle

        path = export_monai_bundle(loaded, args.output, nmf_iters=args.nmf_iters, overwrite=args.overwrite)
    else:
        from factorseg.inference.export import export_bundle

        path = export_bundle(loaded, args.output, args.format, nmf_iters=args.nmf_iters, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0


def _add_import_checkpoint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-checkpoint", help="convert a checkpoint of the authors' Factorizer code into a bundle",
        description="Read a Lightning checkpoint of the authors' Factorizer code (SegmentationFactorizer) without "
        "running anything in it and write a factorseg model bundle. The architecture is read from the weights; "
        "what they cannot tell comes from the checkpoint's plain hyper-parameters, the options below, or the "
        "paper's values.",
        epilog="Example: factorseg import-checkpoint brats_fold0.ckpt -o brats_fold0.pt",
    )
    p.add_argument("checkpoint", type=Path, help="the authors' Lightning checkpoint (.ckpt)")
    p.add_argument("-o", "--output", required=True, type=Path, help="bundle to write (.pt)")
    p.add_argument("--variant", choices=["swin", "local"], help="windows: shifted (swin) or not (local); "
                   "default: from the checkpoint")
    p.add_argument("--window-size", type=int, nargs="+", metavar="N", help="window edge(s), where v0 is not a cube")
    p.add_argument("--nmf-iters", type=int, help="NMF iterations (default: the checkpoint's, else 5)")
    p.add_argument("--labels", help="label convention (default: msd_task01 for 3 outputs, isles22 for 1)")
    p.add_argument("--channels", nargs="+", help="input channel names (default: FLAIR T1w t1gd T2w for 4, "
                   "DWI ADC for 2)")
    p.add_argument("--crop", type=int, help="training patch edge (default: positional embedding size x total stride)")
    p.add_argument("--spacing", type=float, nargs=3, metavar="MM", help="voxel spacing to resample to "
                   "(default: 1 mm for BraTS labels, the images' own otherwise)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.set_defaults(func=_cmd_import_checkpoint)


def _cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from factorseg.config import Int, Num
    from factorseg.bundles.official import import_official_checkpoint

    _check_options(args, {"nmf_iters": Int(0, cap=1000), "window_size": Int(1, cap=512), "crop": Int(1, cap=1024),
                          "spacing": Num(0.0, lo_open=True, cap=100.0)})

    window = args.window_size[0] if args.window_size and len(args.window_size) == 1 else args.window_size
    path = import_official_checkpoint(
        args.checkpoint, args.output, overwrite=args.overwrite, variant=args.variant, nmf_iters=args.nmf_iters,
        window_size=window, labels=args.labels, channels=args.channels, crop=args.crop,
        spacing=args.spacing if args.spacing is not None else "auto",
    )
    print(f"wrote {path}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the whole idea in minutes on synthetic data",
        description="Generate synthetic brain-tumour MRI, train a small Swin Factorizer, predict held-out cases, "
        "evaluate them and write report.html with scores, learning curve, overlays and NMF component maps. "
        "Nothing is downloaded. The command runs torch on all CPU cores but one (at least one).",
        epilog="Example: factorseg demo -o demo_out --minutes 3",
    )
    p.add_argument("-o", "--output", "--out", dest="out", metavar="OUTPUT", type=Path, default=Path("demo_out"),
                   help="output folder")
    p.add_argument("--minutes", type=float, help="training time budget in minutes (default: the recipe's epochs)")
    p.add_argument("--cases", type=int, default=None, help="synthetic training cases (default: the demo's own)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


@contextmanager
def _spare_one_core() -> Iterator[None]:
    """torch on all cores but one (at least one thread) for the body, then the thread count as it was.

    The demo command's choice, made here because the command owns the process (``run_demo``, like all library
    code, leaves the thread count alone). On a 2-core machine two torch threads are only faster while nothing
    else runs: with any other load one thread waits for the other at every parallel region, and training steps
    were measured up to 20x slower (6 s instead of 0.3 s); a single thread stays at about 0.3 s.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cmd_demo(args: argparse.Namespace) -> int:
    from factorseg.demo.pipeline import run_demo

    kwargs = {"cases": args.cases} if args.cases is not None else {}
    with _spare_one_core():
        run_demo(args.out, minutes=args.minutes, seed=args.seed, progress=not args.no_progress,
                 overwrite=args.overwrite, **kwargs)
    return 0


def _add_recipes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list shipped recipes and the settings -s accepts, or print one",
                       description="List the shipped training recipes with a line on each and the keys that "
                       "`factorseg train -s SECTION.KEY=VALUE` accepts, or print one recipe as YAML.",
                       epilog="Example: factorseg recipes hippocampus")
    p.add_argument("name", nargs="?", help="recipe to print")
    p.add_argument("--keys", action="store_true", help="list every key with its type and range")
    p.set_defaults(func=_cmd_recipes)


def _recipes_listing(keys: bool) -> list[str]:
    """What ``factorseg recipes`` prints: each recipe with its description, then the settings -s accepts (with
    ``keys``: each with its type and range). On a terminal the lines fit its width; piped they are printed in full."""
    import textwrap

    from factorseg.config import available_recipes, describe_keys, recipe_description
    from factorseg.console import PIPE_WIDTH, is_terminal

    names = available_recipes()
    width = max(map(len, names))
    columns = shutil.get_terminal_size((100, 24)).columns if is_terminal() else PIPE_WIDTH
    lines = ["Recipes (factorseg train --recipe NAME; factorseg recipes NAME prints one):"]
    lines += [f"  {name:<{width}}  {recipe_description(name, width=max(40, columns - width - 5))}" for name in names]
    if keys:
        lines.append("\nSettings (factorseg train -s SECTION.KEY=VALUE):")
        for section, items in describe_keys().items():
            lines += [f"  {section}:", *(f"    {section}.{key}: {text}" for key, text in items)]
        return lines
    lines.append("\nSettings that -s SECTION.KEY=VALUE accepts (factorseg recipes --keys gives their types and ranges):")
    for section, items in describe_keys().items():
        line = f"{section}: " + ", ".join(dict.fromkeys(key for key, _ in items))
        lines.append(textwrap.fill(line, width=min(110, max(60, columns - 1)), initial_indent="  ",
                                   subsequent_indent="    "))
    return [*lines, "  (model: also any other constructor argument of the MONAI baselines)"]


def _cmd_recipes(args: argparse.Namespace) -> int:
    import yaml

    from factorseg.config import load_recipe

    if args.name:
        print(yaml.safe_dump(load_recipe(args.name), sort_keys=False), end="")
    else:
        print("\n".join(_recipes_listing(args.keys)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="factorseg", formatter_class=_HelpFormatter,
        description="Factorizer models (NMF instead of attention) for 3D medical image segmentation: "
        "train, predict, evaluate and explain on NIfTI data.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"factorseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_parser = sub.add_parser

    def add_parser(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - every command: defaults in its help
        kwargs.setdefault("formatter_class", _HelpFormatter)
        return _add_parser(*args, **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    for add in (_add_train, _add_predict, _add_evaluate, _add_explain, _add_export, _add_import_checkpoint,
                _add_demo, _add_recipes):
        add(sub)
    return parser


def input_error(exc: BaseException) -> InputError | None:
    """The InputError behind ``exc``, if any (MONAI wraps errors raised inside transforms)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, InputError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


# Conditions of the machine, not of factorseg or its input: reported in one line with exit status 1.
_SYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def system_error(exc: BaseException) -> str | None:
    """A one-line message for known failures of the machine behind ``exc`` (out of memory, disk full,
    read-only or forbidden output), if any; anything else is a bug and keeps its traceback."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError) or type(current).__name__ == "OutOfMemoryError":
            first = (str(current).strip().splitlines() or [""])[0][:200]
            return (f"out of memory ({first or type(current).__name__}); try a smaller --sw-batch-size, another "
                    "--device, or a smaller model / transforms.roi_size")
        if isinstance(current, OSError) and current.errno in _SYSTEM_ERRNOS:
            where = f"{current.filename}: " if current.filename else ""
            return f"{where}{current.strerror or os.strerror(current.errno)}"
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """Input warnings (e.g. a channel resampled onto another grid) as one ``factorseg: warning:`` line."""
    if issubclass(category, InputWarning):
        print(f"factorseg: warning: {message}", file=file or sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``factorseg`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: their status, returned
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    previous, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        with warnings.catch_warnings():
            # torch warns that torch.jit is deprecated while MONAI imports pytorch-ignite (the `export` extra):
            # library internals, not the user's concern
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
            return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error of ours
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except Exception as exc:  # noqa: BLE001 - user errors become one line; others keep their traceback
        if args.debug:
            raise
        problem = input_error(exc)
        if problem is not None:
            print(f"factorseg: error: {problem}", file=sys.stderr)
            return 2
        failure = system_error(exc)
        if failure is None:
            raise
        print(f"factorseg: error: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("factorseg: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous


def run() -> None:
    """The ``factorseg`` console command: the process's allocator settings, then :func:`main`.

    Only the command changes process-wide state (:func:`factorseg.allocator.restart_tuned` re-executes it
    once with glibc's tunables; opt out with ``FACTORSEG_ALLOCATOR=default``); :func:`main` itself, called
    from Python, leaves the process as it is.
    """
    from factorseg import allocator

    allocator.restart_tuned()
    sys.exit(main())


if __name__ == "__main__":
    run()
