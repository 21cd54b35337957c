"""Forward time, training-step time and peak memory of our Factorizers and MONAI baselines.

Default: Swin / local / global Factorizer (BraTS preset), SegResNet (16 initial filters), SwinUNETR
(feature size 24 and 48), UNETR and DynUNet, at 64^3, 96^3 and 128^3, batch 1, 4 -> 3 channels.
At each size all models are timed interleaved in this process (see ``benchmarks/common.py``); peak
memory of a training step comes from one child process per model. ``--reference`` adds the Swin
Factorizer run through the plain reference blocks (the "before"), ``--bf16`` its forward pass under
bf16 autocast, ``--window-path`` the same model with its mixers on the window path (the "before" of
the sub-block path). Ratios are against SegResNet measured in the same run.

    python -m benchmarks.models --sizes 64 96 128 --repeats 3
    python -m benchmarks.models --sizes 128 --models swin_factorizer segresnet --repeats 7 --no-memory

A training step at 128^3 needs about 12 GiB for a Factorizer and more for SwinUNETR / DynUNet: on a small
shared machine run 128^3 with ``--no-train --no-memory`` and time training on the pairs you need.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
from collections.abc import Callable

import torch

from benchmarks.common import (
    DEFAULT_MODELS,
    MODELS,
    build,
    child_peak_memory,
    common_arguments,
    fits,
    fmt_seconds,
    forward_runner,
    inputs,
    interleaved,
    markdown_table,
    reference_model,
    save_json,
    save_plot,
    setup,
    train_runner,
)
from factorseg.models import count_parameters
from factorseg.models.layers.mixer import with_mixer_path

REFERENCE = "swin_factorizer (reference impl)"
BF16 = "swin_factorizer (bf16 autocast)"
WINDOW_PATH = "swin_factorizer (window path)"


def within(ctx: Callable[[], contextlib.AbstractContextManager], run: Callable[[], object]) -> Callable[[], object]:
    def wrapped() -> object:
        with ctx():
            return run()

    return wrapped


def runnable(runs: dict[str, Callable[[], object]], errors: dict[str, str], what: str) -> dict[str, Callable[[], object]]:
    """The runs that complete once (also the warm-up); failures are recorded, not fatal."""
    ok = {}
    for name, run in runs.items():
        try:
            run()
        except (RuntimeError, ValueError) as err:  # e.g. out of memory, or a size a model cannot take
            errors[name] = f"{what}: {str(err).splitlines()[0][:160]}"
            print(f"{name}: {errors[name]}", flush=True)
            continue
        ok[name] = run
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--train-repeats", type=int, default=3, help="timed training steps per model")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-memory", action="store_true", help="skip the child-process peak-memory runs")
    parser.add_argument("--reference", action="store_true", help="also the Swin Factorizer's reference implementation")
    parser.add_argument("--reference-max-size", type=int, default=64, help="largest size for --reference (it is slow)")
    parser.add_argument("--bf16", action="store_true", help="also the Swin Factorizer's forward under bf16 autocast")
    parser.add_argument("--window-path", action="store_true", help="also the Swin Factorizer with the mixers' window path")
    args = parser.parse_args()
    env = setup(args)
    device = torch.device(args.device)
    results: dict[str, dict[str, dict[str, object]]] = {}
    # Peak memory first, in fresh children, while this process is still small: a tuned allocator keeps this
    # process's freed heap for reuse, and beside a large timing process the children ran out of memory.
    memories: dict[int, dict[str, dict]] = {}
    for size in [] if args.no_memory else args.sizes:
        for name in (n for n in args.models if fits(n, size)):
            cmd = [name, str(size), "train", "--threads", str(args.threads), "--device", args.device]
            memories.setdefault(size, {})[name] = child_peak_memory(
                cmd + (["--tune-allocator"] if args.tune_allocator else []))
            print(name, size, memories[size][name], flush=True)
    for size in args.sizes:
        names = [n for n in args.models if fits(n, size)]
        x, target = inputs(size, device)
        models = {}
        for name in names:
            torch.manual_seed(0)
            models[name] = build(name, size).to(device)
        fwd = {n: forward_runner(m, x) for n, m in models.items()}
        train = {n: train_runner(m, x, target) for n, m in models.items()}
        if "swin_factorizer" in models:
            swin = models["swin_factorizer"]
            # The same weights, as copies: the reference formulation and the mixers' window path.
            if args.reference and size <= args.reference_max_size:
                reference = reference_model(swin)
                fwd[REFERENCE] = forward_runner(reference, x)
                train[REFERENCE] = train_runner(reference, x, target)
            if args.window_path:
                windowed = with_mixer_path(swin, "windows")
                fwd[WINDOW_PATH] = forward_runner(windowed, x)
                train[WINDOW_PATH] = train_runner(windowed, x, target)
            if args.bf16:
                fwd[BF16] = within(lambda: torch.autocast(device.type, dtype=torch.bfloat16), forward_runner(swin, x))
        errors = {}
        print(f"--- {size}^3: forward", flush=True)
        fwd_t = interleaved(runnable(fwd, errors, "forward"), args.repeats, device, warmup=False)
        train_t = {}
        if not args.no_train:
            print(f"--- {size}^3: training step", flush=True)
            train_t = interleaved(runnable(train, errors, "train"), args.train_repeats, device, warmup=False)
        params = {n: count_parameters(m) for n, m in models.items()}
        del models, fwd, train
        gc.collect()
        memory = memories.get(size, {})
        for name, message in errors.items():
            results.setdefault(name, {}).setdefault(str(size), {})["error"] = message
        for name, t in fwd_t.items():
            entry = results.setdefault(name, {}).setdefault(str(size), {})
            entry.update(forward=t, params=params.get(name.split(" (")[0]))
            if name in train_t:
                entry["train"] = train_t[name]
            if name in memory:
                entry["memory"] = memory[name]
        save_json(args.out / "models.json", {"environment": env, "results": results})

    def cell(name: str, size: int, key: str) -> object:
        entry = results.get(name, {}).get(str(size), {})
        return entry.get(key)

    rows = []
    for size in args.sizes:
        base_f, base_t = cell("segresnet", size, "forward"), cell("segresnet", size, "train")
        for name in results:
            f, t, mem = cell(name, size, "forward"), cell(name, size, "train"), cell(name, size, "memory")
            if f is None:
                continue
            peak = "-" if not mem else (mem.get("error") or f"{mem['peak_mib']:.0f}")
            params = cell(name, size, "params")
            rows.append((
                f"{size}^3", name, f"{params / 1e6:.1f}" if params else "-",
                f"{fmt_seconds(f.min)} / {fmt_seconds(f.median)}",
                f"{f.min / base_f.min:.2f} / {f.median / base_f.median:.2f}" if base_f else "-",
                f"{fmt_seconds(t.min)} / {fmt_seconds(t.median)}" if t else "-",
                f"{t.min / base_t.min:.2f} / {t.median / base_t.median:.2f}" if t and base_t else "-",
                peak,
            ))
    table = markdown_table(["input", "model", "params (M)", "forward s (min / median)", "vs SegResNet",
                            "train step s (min / median)", "vs SegResNet", "train peak MiB"], rows)
    print(table)
    save_json(args.out / "models.json", {"environment": env, "results": results, "table": table})

    def draw(fig) -> None:
        axes = fig.subplots(1, 2)
        for ax, key, title in zip(axes, ("forward", "train"), ("forward pass", "training step")):
            for name in results:
                xs = [s for s in args.sizes if cell(name, s, key)]
                if xs:
                    ax.plot(xs, [cell(name, s, key).min for s in xs], marker="o", label=name)
            ax.set_xlabel("cubic input edge (voxels)")
            ax.set_ylabel("seconds (minimum)")
            ax.set_yscale("log")
            ax.set_title(f"{title}, {args.threads} threads, {device.type}")
        axes[0].legend(fontsize=7)

    save_plot(args.out / "models.png", draw, size=(12, 5))


if __name__ == "__main__":
    main()
