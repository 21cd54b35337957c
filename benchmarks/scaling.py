"""Scaling: forward (or training-step) time per voxel of the Swin Factorizer and SegResNet, 32^3 to 160^3.

The method is linear in the number of voxels, so time per voxel should be flat once the input is
large enough to amortise fixed costs. Sizes are interleaved within each repetition; reported are
the minimum and median per size, the spread of the per-voxel minimum over ``--flat-from``
and up (target: within 25 %), and the memory page-faulted in per timed run (median), which shows
when the allocator stopped reusing freed memory.

    python -m benchmarks.scaling --sizes 32 48 64 80 96 112 128 144 160 --repeats 3
    python -m benchmarks.scaling --mode train --models swin_factorizer --sizes 64 96 128 160 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
from collections.abc import Callable

import torch

from benchmarks.common import (
    build,
    common_arguments,
    fmt_seconds,
    forward_runner,
    train_runner,
    inputs,
    interleaved,
    markdown_table,
    save_json,
    save_plot,
    setup,
)


def counting_faults(run: Callable[[], object], counts: list[int]) -> Callable[[], object]:
    """``run``, appending the minor page faults of each call to ``counts``."""

    def counted() -> object:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        out = run()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return out

    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--models", nargs="+", default=["swin_factorizer", "segresnet"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64, 80, 96, 112, 128, 144, 160])
    parser.add_argument("--flat-from", type=int, default=64)
    parser.add_argument("--mode", choices=["forward", "train"], default="forward",
                        help="time the forward pass (inference) or a training step (AdamW, deep-supervision loss)")
    args = parser.parse_args()
    env = setup(args)
    device = torch.device(args.device)
    runs, keys = {}, []
    faults: dict[str, list[int]] = {}
    for name in args.models:
        torch.manual_seed(0)
        model = build(name, 128).to(device)  # both models are size-agnostic
        for size in args.sizes:
            x, target = inputs(size, device)
            run = forward_runner(model, x) if args.mode == "forward" else train_runner(model, x, target)
            runs[(name, size)] = counting_faults(run, faults.setdefault(f"{name}@{size}", []))
            keys.append((name, size))
    timings = interleaved({f"{n}@{s}": runs[(n, s)] for n, s in keys}, args.repeats, device)
    del runs
    gc.collect()
    rows, results = [], {}
    for name in args.models:
        per_voxel = {}
        for size in args.sizes:
            t = timings[f"{name}@{size}"]
            ns = 1e9 / size**3
            per_voxel[size] = t.min * ns
            # Page faults of the timed runs (the first call is the warm-up): memory the OS had to map in again.
            fault_mib = statistics.median(faults[f"{name}@{size}"][1:]) * resource.getpagesize() / 2**20
            results.setdefault(name, {})[str(size)] = {
                "times": t.times, "ns_per_voxel_min": t.min * ns, "median_page_fault_mib": fault_mib
            }
            rows.append((name, f"{size}^3", fmt_seconds(t.min), fmt_seconds(t.median), f"{t.min * ns:.0f}",
                         f"{t.median * ns:.0f}", f"{fault_mib:.0f}"))
        flat = [v for s, v in per_voxel.items() if s >= args.flat_from]
        if flat:
            spread = max(flat) / min(flat) - 1
            results[name]["spread_from"] = {"size": args.flat_from, "max_over_min_minus_1": spread}
            rows.append((name, f"spread {args.flat_from}^3+", "", "", f"{100 * spread:.0f} %", "", ""))
    table = markdown_table(["model", "input", "min s", "median s", "ns/voxel (min)", "ns/voxel (median)",
                            "page faults per run, MiB (median)"], rows)
    print(table)
    save_json(args.out / "scaling.json", {"environment": env, "mode": args.mode, "results": results, "table": table})

    def draw(fig) -> None:
        ax = fig.subplots()
        for name in args.models:
            ax.plot(args.sizes, [results[name][str(s)]["ns_per_voxel_min"] for s in args.sizes], marker="o", label=name)
        ax.set_xlabel("cubic input edge (voxels)")
        ax.set_ylabel(f"{args.mode} time per voxel, ns (minimum)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"time per voxel, {args.threads} threads, {device.type}")
        ax.legend()

    save_plot(args.out / "scaling.png", draw)


if __name__ == "__main__":
    main()
