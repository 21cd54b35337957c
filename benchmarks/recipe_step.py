"""Training-step time of recipes' models at their own crop and batch, side by side (e.g. the hippocampus target).

A step is what ``factorseg train`` runs per batch: forward in train mode (with the recipe's deep
supervision), MONAI's deep-supervised Dice + cross-entropy, backward, AdamW. The inputs are random
(``train.batch_size x transforms.num_samples`` crops of ``transforms.roi_size``), the models interleaved
(A, B, A, B, ...) after one warm-up step each; the JSON keeps every time, the load average and the
command. The data pipeline is not timed.

    python -m benchmarks.recipe_step --recipes hippocampus hippocampus_segresnet \\
        "hippocampus:model.widths=[32,64,128,256]" --repeats 10 --threads 1 --tune-allocator \\
        --out benchmarks/results/recipe_step

A recipe is ``NAME`` or ``NAME:KEY=VALUE;KEY=VALUE`` (overrides as ``factorseg train -s`` takes them).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import common_arguments, fmt_seconds, interleaved, markdown_table, save_json, setup
from factorseg import models
from factorseg.bundles.format import build_model
from factorseg.config.recipes import apply_overrides, load_recipe
from factorseg.training.module import adamw


def recipe_model(spec: str, in_channels: int, out_channels: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of recipe ``spec`` (``NAME[:overrides]``) as ``factorseg train`` builds it, and the recipe."""
    name, _, rest = spec.partition(":")
    cfg = apply_overrides(load_recipe(name), [o for o in rest.split(";") if o])
    model_cfg = models.explicit_architecture(dict(cfg["model"]))
    model_cfg["in_channels"] = model_cfg.get("in_channels") or in_channels
    model_cfg["out_channels"] = model_cfg.get("out_channels") or out_channels
    if model_cfg["name"] in models.FACTORIZERS and "pos_embed_size" not in model_cfg:
        model_cfg["crop"] = list(cfg["transforms"]["roi_size"])
    return build_model(model_cfg), cfg


def step_runner(model: torch.nn.Module, cfg: dict[str, Any], in_channels: int, out_channels: int,
                seed: int = 0) -> Callable[[], None]:
    """One training step of ``model`` on a random batch shaped as recipe ``cfg`` feeds it."""
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    gen = torch.Generator().manual_seed(seed)
    batch = cfg["train"]["batch_size"] * cfg["transforms"].get("num_samples", 1)
    roi = cfg["transforms"]["roi_size"]
    x = torch.randn(batch, in_channels, *roi, generator=gen)
    y = torch.randint(0, out_channels, (batch, 1, *roi), generator=gen).float()
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weight_mode="exp")
    opt = adamw(model.parameters(), lr=1e-4, weight_decay=1e-2)  # as factorseg train

    def run() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        out = model(x)
        if isinstance(out, torch.Tensor) and out.dim() == x.dim() + 1:
            out = list(out.unbind(1))  # DynUNet stacks its deep-supervision heads
        loss(out, y).backward()
        opt.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", required=True, help="NAME or NAME:KEY=VALUE;KEY=VALUE")
    parser.add_argument("--in-channels", type=int, default=1, help="image channels (hippocampus: 1)")
    parser.add_argument("--out-channels", type=int, default=3, help="network outputs (hippocampus: 3)")
    common_arguments(parser)
    args = parser.parse_args()
    env = setup(args)
    runners = {}
    for spec in args.recipes:
        torch.manual_seed(0)
        model, cfg = recipe_model(spec, args.in_channels, args.out_channels)
        runners[spec] = step_runner(model, cfg, args.in_channels, args.out_channels)
    timings = interleaved(runners, args.repeats, torch.device("cpu"))
    env["load_average_end"] = os.getloadavg()
    first = timings[args.recipes[0]].median
    rows = [(spec, fmt_seconds(t.min), fmt_seconds(t.median), f"{t.median / first:.2f}x")
            for spec, t in timings.items()]
    table = markdown_table(("recipe", "min", "median", f"vs {args.recipes[0]}"), rows)
    print(table)
    save_json(args.out / "recipe_step.json", {"environment": env, "results": timings, "table": table})


if __name__ == "__main__":
    main()
