"""Child process for peak-memory measurements: build one model, run one warm-up and ``--steps`` measured steps.

Prints one JSON line: ``peak_mib`` (CPU: peak resident size of this process, ``VmHWM``, over the
whole run; CUDA: ``max_memory_allocated`` during the measured steps), ``before_mib`` (resident or
allocated size after building the model and inputs), the first measured step's wall time and, per
step (warm-up first), ``hwm_mib`` and ``rss_mib`` after it (CPU) and its ``step_seconds``: whether the
process keeps growing over many steps, or stays at its working set. Run by
:func:`benchmarks.common.child_peak_memory`; a fresh process per configuration keeps the peaks independent.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.common import (
    MODELS,
    build,
    current_rss_mib,
    forward_runner,
    inputs,
    max_rss_mib,
    reference_model,
    train_runner,
    tune_allocator,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("size", type=int)
    parser.add_argument("mode", choices=["forward", "train"])
    parser.add_argument("--impl", choices=["ours", "checkpointed", "reference"], default="ours",
                        help="checkpointed: ours with checkpoint_blocks=True")
    parser.add_argument("--backprop-iters", type=int, default=0, help="0: full unrolling; k: last k iterations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tune-allocator", action="store_true")
    parser.add_argument("--steps", type=int, default=1, help="measured steps after the warm-up")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: then the peak is torch.cuda.max_memory_allocated")
    args = parser.parse_args()
    if args.tune_allocator:
        tune_allocator()
    torch.set_num_threads(args.threads)
    factorizer = MODELS[args.model][0].endswith("factorizer")  # also its variants (no dropout, checkpointed)
    overrides = {"backprop_iters": args.backprop_iters or None} if factorizer else {}
    if args.impl == "checkpointed":
        overrides["checkpoint_blocks"] = True
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build(args.model, args.size, **overrides).to(device)
    if args.impl == "reference":
        model = reference_model(model, in_place=True)
    x, target = inputs(args.size, device)
    run = forward_runner(model, x) if args.mode == "forward" else train_runner(model, x, target)
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) / 2**20 if cuda else current_rss_mib()
    hwm, rss, times = [], [], []
    for step in range(1 + args.steps):
        if cuda and step == 1:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        if not cuda:
            hwm.append(round(max_rss_mib(), 1))
            rss.append(round(current_rss_mib(), 1))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else max_rss_mib()
    report = {"peak_mib": round(peak, 1), "before_mib": round(before, 1), "seconds": times[1]}
    if args.steps > 1:
        report.update(hwm_mib=hwm, rss_mib=rss, step_seconds=[round(t, 3) for t in times])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
