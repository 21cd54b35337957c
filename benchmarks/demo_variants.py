"""The demo recipe with each of factorseg's earlier architectural choices in turn: held-out Dice and time.

Every variant runs the whole demo (synthetic data, 144 training steps, held-out scoring) with the same
seed, one after the other in this process; the paper's network is the first row. Used to decide which
non-paper option the demo recipe takes (docs/paper.md).

    .venv/bin/python benchmarks/demo_variants.py --seeds 0 1 --out benchmarks/results/demo_variants
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from factorseg.demo.pipeline import run_demo

EARLIER = ["model.stem=conv_block", "model.down_norm=true", "model.init=fixed_u", "model.proj_bias=true",
           "model.fuse_dropout=false"]
VARIANTS = {
    "paper": ["model.stem=conv", "model.down_norm=false", "model.init=fixed_uv", "model.proj_bias=false",
              "model.fuse_dropout=true"],
    "stem=conv_block": ["model.stem=conv_block"],
    "down_norm=true": ["model.down_norm=true"],
    "init=fixed_u": ["model.init=fixed_u"],
    "proj_bias, no fuse dropout": ["model.proj_bias=true", "model.fuse_dropout=false"],
    "all earlier choices": EARLIER,
    "paper + lr 0.001": ["model.stem=conv", "train.lr=0.001"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/demo_variants"))
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        for name, overrides in VARIANTS.items():
            with tempfile.TemporaryDirectory() as tmp:
                result = run_demo(Path(tmp) / "demo", seed=seed, progress=False, overrides=overrides)
            rows.append({"variant": name, "seed": seed, "mean_dice": result.mean_dice, "dice": result.dice,
                         "steps": result.steps, "seconds": result.seconds, "load": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_variants.json").write_text(json.dumps(rows, indent=1))
    print("\n| variant | " + " | ".join(f"seed {s}" for s in args.seeds) + " |")
    print("|---|" + "---|" * len(args.seeds))
    for name in VARIANTS:
        scores = [f"{r['mean_dice']:.3f}" for r in rows if r["variant"] == name]
        print(f"| {name} | " + " | ".join(scores) + " |")


if __name__ == "__main__":
    main()
