"""Peak memory of a Factorizer training step: full unrolling vs the one-step gradient, ours vs reference
(and, with ``--impl checkpointed``, ours with the blocks recomputed in the backward pass).

Each configuration runs in a fresh child process (``benchmarks/memory_child.py``): build the model,
one warm-up step, one measured step; the peak is the child's peak resident size (whole process, so it
includes ~0.3-0.5 GB of libraries and the model, reported separately as ``before``).

    python -m benchmarks.memory --sizes 64 128 --impl ours reference
"""

from __future__ import annotations

import argparse

from benchmarks.common import child_peak_memory, common_arguments, markdown_table, save_json, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--model", default="swin_factorizer")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--impl", nargs="+", choices=["ours", "checkpointed", "reference"], default=["ours", "reference"],
                        help="checkpointed: ours with checkpoint_blocks=True (blocks recomputed in backward)")
    parser.add_argument("--reference-max-size", type=int, default=96,
                        help="skip the reference above this size (its full unrolling needs tens of GB at 128^3)")
    args = parser.parse_args()
    env = setup(args)
    rows, results = [], []
    for size in args.sizes:
        for impl in args.impl:
            if impl == "reference" and size > args.reference_max_size:
                continue
            peaks = {}
            for label, k in (("full unrolling", 0), ("one-step", 1)):
                cmd = [args.model, str(size), "train", "--impl", impl, "--backprop-iters", str(k),
                       "--threads", str(args.threads), "--device", args.device]
                cmd += ["--tune-allocator"] if args.tune_allocator else []
                res = child_peak_memory(cmd)
                res.update(size=size, impl=impl, gradient=label)
                results.append(res)
                peaks[label] = res
                print(res, flush=True)
            full, one = peaks["full unrolling"], peaks["one-step"]
            if "error" in full or "error" in one:
                rows.append((f"{size}^3", impl, full.get("error", full.get("peak_mib")), one.get("error", one.get("peak_mib")), "-", "-"))
                continue
            act_full, act_one = full["peak_mib"] - full["before_mib"], one["peak_mib"] - one["before_mib"]
            rows.append((f"{size}^3", impl, f"{full['peak_mib']:.0f} ({act_full:.0f})", f"{one['peak_mib']:.0f} ({act_one:.0f})",
                         f"{one['peak_mib'] / full['peak_mib']:.2f}", f"{act_one / act_full:.2f}"))
    table = markdown_table(["input", "implementation", "full unrolling: peak MiB (above start)",
                            "one-step: peak MiB (above start)", "peak ratio", "above-start ratio"], rows)
    print(table)
    save_json(args.out / f"memory_{args.model}.json", {"environment": env, "results": results, "table": table})


if __name__ == "__main__":
    main()
