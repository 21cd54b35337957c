"""Where a hippocampus training step goes, Factorizer against SegResNet: forward, loss, backward and optimizer medians
of 10 steps after 2 warm-up steps (the two models alternating), and the Factorizer's time drawing dropout masks
(``dropout.keep_mask``, summed per step). Any OpenMP variables of the environment are printed with the figures.

    PYTHONPATH=.:src python benchmarks/results/session29/hippocampus_phases.py THREADS   # the command's allocator settings
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss

from benchmarks.common import cpu_model
from benchmarks.recipe_step import recipe_model
from factorseg.models.layers import dropout, mlp


def main() -> None:
    threads = int(sys.argv[1])
    torch.set_num_threads(threads)
    omp = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_"))}
    print("load", os.getloadavg(), cpu_model(), "threads", threads, "env", omp)
    mask_seconds = [0.0]
    draw = dropout.keep_mask

    def timed_keep_mask(*args, **kwargs):
        start = time.perf_counter()
        out = draw(*args, **kwargs)
        mask_seconds[0] += time.perf_counter() - start
        return out

    dropout.keep_mask = mlp.keep_mask = timed_keep_mask  # what Dropout and the MLP's diet call
    runs = {}
    for name in ("hippocampus", "hippocampus_segresnet"):
        torch.manual_seed(0)
        model, _ = recipe_model(name, 1, 3)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(4, 1, 40, 56, 40, generator=gen)
        y = torch.randint(0, 3, (4, 1, 40, 56, 40), generator=gen).float()
        loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weight_mode="exp")
        runs[name] = (model.train(), x, y, loss, torch.optim.AdamW(model.parameters(), lr=1e-4))
    phases = {name: {k: [] for k in ("forward", "loss", "backward", "optimizer", "masks")} for name in runs}
    for rep in range(12):
        for name, (model, x, y, loss, opt) in runs.items():
            opt.zero_grad(set_to_none=True)
            mask_seconds[0] = 0.0
            t0 = time.perf_counter()
            out = model(x)
            t1 = time.perf_counter()
            value = loss(out, y)
            t2 = time.perf_counter()
            value.backward()
            t3 = time.perf_counter()
            opt.step()
            t4 = time.perf_counter()
            if rep >= 2:
                for key, t in zip(phases[name], (t1 - t0, t2 - t1, t3 - t2, t4 - t3, mask_seconds[0])):
                    phases[name][key].append(t)
    for name, p in phases.items():
        print(name, ", ".join(f"{k} {1e3 * statistics.median(v):.1f} ms" for k, v in p.items()))
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
