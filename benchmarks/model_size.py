"""Parameters and FLOPs of every Factorizer preset at its crop size (the README table).

Run: .venv/bin/python benchmarks/model_size.py
FLOPs are counted by torch.utils.flop_counter (convolutions and matrix products; a multiply-add
counts 2); GMACs = GFLOPs / 2, the convention of fvcore/thop-style counters.
"""

from __future__ import annotations

import torch

from factorseg.models import PRESETS, count_flops, count_parameters, create


def main() -> None:
    torch.set_num_threads(2)
    print("| model | preset | crop | parameters (M) | GFLOPs | GMACs |")
    print("|---|---|---|---|---|---|")
    for preset, spec in PRESETS.items():
        crop = spec["crop"]
        for name in ("swin_factorizer", "local_factorizer", "global_factorizer"):
            model = create(name, preset=preset)
            flops = count_flops(model, (1, spec["in_channels"], crop, crop, crop))
            print(f"| {name} | {preset} | {crop}^3 | {count_parameters(model) / 1e6:.2f} | {flops / 1e9:.1f} | "
                  f"{flops / 2e9:.1f} |")


if __name__ == "__main__":
    main()
