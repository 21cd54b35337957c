"""Micro-benchmark: factorseg's CPU dropout against ``nn.Dropout``, forward + backward (on a GPU both are
``F.dropout``).

The tensor is the BraTS preset's MLP hidden state at 96^3 by default, ``(1, S, S, S, 64)``; the two are
timed interleaved (minimum and median of ``--repeats``).

    python -m benchmarks.dropout --size 96 --repeats 7
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import common_arguments, interleaved, markdown_table, save_json, setup
from factorseg.models.layers.dropout import Dropout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--p", type=float, default=0.1)
    args = parser.parse_args()
    env = setup(args)
    device = torch.device(args.device)
    x = torch.randn(1, args.size, args.size, args.size, args.channels, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    runs = {
        name: (lambda layer=layer: torch.autograd.grad(layer(x), x, grad))
        for name, layer in (("factorseg Dropout", Dropout(args.p)), ("nn.Dropout", torch.nn.Dropout(args.p)))
    }
    timings = interleaved(runs, args.repeats, device)
    rows = [(name, f"{1e3 * t.min:.1f}", f"{1e3 * t.median:.1f}") for name, t in timings.items()]
    table = markdown_table(["forward + backward", "min ms", "median ms"], rows)
    print(table)
    save_json(args.out / "dropout.json", {"environment": env, "results": timings, "table": table})


if __name__ == "__main__":
    main()
