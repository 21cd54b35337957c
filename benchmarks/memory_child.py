"""Child process for peak-memory measurements: build one model, run one warm-up and one measured step.

Prints one JSON line: ``peak_mib`` (``ru_maxrss`` of this process, which covers the whole run),
``before_mib`` (resident size after building the model and inputs, before the first step) and the
step's wall time. Run by :func:`benchmarks.common.child_peak_memory`; a fresh process per
configuration keeps the peaks independent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from benchmarks.common import (
    build,
    current_rss_mib,
    forward_runner,
    inputs,
    max_rss_mib,
    reference_blocks,
    train_runner,
    tune_allocator,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("size", type=int)
    parser.add_argument("mode", choices=["forward", "train"])
    parser.add_argument("--impl", choices=["ours", "reference"], default="ours")
    parser.add_argument("--backprop-iters", type=int, default=0, help="0: full unrolling; k: last k iterations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tune-allocator", action="store_true")
    args = parser.parse_args()
    if args.tune_allocator:
        tune_allocator()
    torch.set_num_threads(args.threads)
    overrides = {"backprop_iters": args.backprop_iters or None} if args.model.endswith("factorizer") else {}
    torch.manual_seed(0)
    model = build(args.model, args.size, **overrides)
    x, target = inputs(args.size, torch.device("cpu"))
    run = forward_runner(model, x) if args.mode == "forward" else train_runner(model, x, target)
    impl = reference_blocks() if args.impl == "reference" else contextlib.nullcontext()
    before = current_rss_mib()
    with impl:
        run()
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    print(json.dumps({"peak_mib": round(max_rss_mib(), 1), "before_mib": round(before, 1), "seconds": seconds}))


if __name__ == "__main__":
    main()
