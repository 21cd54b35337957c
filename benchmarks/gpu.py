"""GPU figures: forward time, training-step time and peak memory of the Factorizer presets vs baselines.

Models: the Swin Factorizer with the BraTS and the ISLES'22 preset (4 -> 3 channels here), SegResNet
(16 filters), SwinUNETR (feature size 24) and DynUNet, at ``--size``^3, for every batch size and
precision (``fp32``; ``bf16``: bf16-mixed autocast, as ``train.precision=bf16-mixed``). Within one
(batch, precision) group the models are timed interleaved after one warm-up (``benchmarks/common.py``);
peak memory is ``torch.cuda.max_memory_allocated`` of each model's own forward and training step.
Writes ``OUT/gpu.json`` and prints a Markdown table; a model that does not fit is recorded, not fatal.

    python -m benchmarks.gpu --device cuda --out benchmarks/results/gpu          # ~5 minutes on an H100/H200
    python -m benchmarks.gpu --device cpu --smoke --out /tmp/gpu_smoke            # what CI runs (CPU, 32^3)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    IN_CHANNELS,
    OUT_CHANNELS,
    build,
    common_arguments,
    fmt_seconds,
    forward_runner,
    interleaved,
    markdown_table,
    max_rss_mib,
    save_json,
    setup,
    train_runner,
)

MODELS = {
    "swin_factorizer (brats)": ("swin_factorizer", {}),
    "swin_factorizer (isles22)": ("swin_factorizer", {"preset": "isles22"}),
    "segresnet": ("segresnet", {}),
    "swinunetr_24": ("swinunetr_24", {}),
    "dynunet": ("dynunet", {}),
}
PRECISIONS = ("fp32", "bf16")


def make(label: str, size: int, device: torch.device) -> nn.Module:
    """Model ``label`` (a preset, with this benchmark's 4 -> 3 channels) on ``device``."""
    name, overrides = MODELS[label]
    return build(name, size, **overrides).to(device)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def under(ctx: Callable[[], contextlib.AbstractContextManager], run: Callable[[], object]) -> Callable[[], object]:
    def wrapped() -> object:
        with ctx():
            return run()

    return wrapped


def peak_mib(run: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one call: CUDA's allocator high-water mark, or the process's on the CPU."""
    if device.type != "cuda":
        run()
        return max_rss_mib()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def group(labels: list[str], size: int, batch: int, precision: str, device: torch.device,
          repeats: int) -> list[dict[str, Any]]:
    """Time and measure every model for one batch size and precision."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, IN_CHANNELS, size, size, size, generator=gen).to(device)
    target = (torch.rand(batch, OUT_CHANNELS, size, size, size, generator=gen) > 0.7).float().to(device)
    forward, train, rows = {}, {}, {}
    for label in labels:
        rows[label] = {"model": label, "size": size, "batch": batch, "precision": precision}
        try:
            model = make(label, size, device)
            fwd = under(lambda: autocast(precision, device), forward_runner(model, x))
            step = under(lambda: autocast(precision, device), train_runner(model, x, target))
            rows[label]["forward_peak_mib"] = peak_mib(fwd, device)
            rows[label]["train_peak_mib"] = peak_mib(step, device)
        except (RuntimeError, ValueError) as err:  # out of memory, or a size the model cannot take
            rows[label]["error"] = str(err).splitlines()[0][:160]
            print(f"{label} batch {batch} {precision}: {rows[label]['error']}", flush=True)
            _free(device)
            continue
        forward[label], train[label] = fwd, step
    for name, runs in (("forward", forward), ("train", train)):
        for label, timing in interleaved(runs, repeats, device, warmup=False).items():
            rows[label][f"{name}_s"] = {"min": timing.min, "median": timing.median, "times": timing.times}
    _free(device)
    return list(rows.values())


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def table(rows: list[dict[str, Any]]) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        return fmt_seconds(row[key]["median"]) if key in row else "-"

    def ratio(row: dict[str, Any], key: str) -> str:
        base = next((r for r in rows if r["model"] == "segresnet" and r["batch"] == row["batch"]
                     and r["precision"] == row["precision"] and key in r), None)
        return f"{row[key]['median'] / base[key]['median']:.2f}x" if base and key in row else "-"

    body = [(r["model"], r["batch"], r["precision"], cell(r, "forward_s"), ratio(r, "forward_s"), cell(r, "train_s"),
             ratio(r, "train_s"), f"{r.get('train_peak_mib', 0):.0f}" if "train_peak_mib" in r else r.get("error", "-"))
            for r in rows]
    header = ["model", "batch", "precision", "forward s (median)", "vs SegResNet", "train step s (median)",
              "vs SegResNet", "train peak MiB"]
    return markdown_table(header, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--smoke", action="store_true", help="32^3, batch 1, fp32, one repeat: checks the script runs (SwinUNETR cannot train at 32^3: recorded)")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.batches, args.precisions, args.repeats = 32, [1], ["fp32"], 1
    env = setup(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu (smoke mode) or on a GPU machine")
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        torch.backends.cudnn.benchmark = True
    rows: list[dict[str, Any]] = []
    for precision in args.precisions:
        for batch in args.batches:
            print(f"--- batch {batch}, {precision}", flush=True)
            rows += group(args.models, args.size, batch, precision, device, args.repeats)
    text = table(rows)
    print(f"\n{args.size}^3, device {env.get('gpu', args.device)}\n\n{text}")
    args.out.mkdir(parents=True, exist_ok=True)
    save_json(args.out / "gpu.json", {"environment": env, "rows": rows, "table": text})


if __name__ == "__main__":
    main()
