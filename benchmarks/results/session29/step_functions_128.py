"""Where a 128^3 BraTS-preset Factorizer training step goes: forward (with the deep-supervised loss) and backward,
and the time inside each of the layers' custom autograd functions (forward and backward, summed over the model),
means of 2 steps after a warm-up step.

    PYTHONPATH=.:src python benchmarks/results/session29/step_functions_128.py THREADS   # the command's allocator settings
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections import defaultdict

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss

from benchmarks.common import build, cpu_model
from factorseg.models.layers import conv, dropout, mixer, mlp, nmf, norm, subblock_boxes, windows


def main() -> None:
    threads = int(sys.argv[1])
    torch.set_num_threads(threads)
    print("load", os.getloadavg(), cpu_model(), "threads", threads)
    seconds: dict[str, float] = defaultdict(float)
    for module in (conv, dropout, mixer, mlp, nmf, norm, subblock_boxes, windows):
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, torch.autograd.Function) and cls.__module__ == module.__name__:
                for which in ("forward", "backward"):
                    def timed(ctx, *args, _fn=cls.__dict__[which].__func__, _key=f"{name}.{which}"):
                        start = time.perf_counter()
                        out = _fn(ctx, *args)
                        seconds[_key] += time.perf_counter() - start
                        return out
                    setattr(cls, which, staticmethod(timed))
    torch.manual_seed(0)
    model = build("swin_factorizer", 128).train()
    x, y = torch.randn(1, 4, 128, 128, 128), torch.randint(0, 3, (1, 1, 128, 128, 128)).float()
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
    forward = backward = 0.0
    for rep in range(3):
        if rep == 1:
            seconds.clear()
            forward = backward = 0.0
        t0 = time.perf_counter()
        value = loss(model(x), y)
        t1 = time.perf_counter()
        value.backward()
        forward, backward = forward + t1 - t0, backward + time.perf_counter() - t1
        model.zero_grad(set_to_none=True)
        del value
    print(f"forward + loss {forward / 2:.3f} s, backward {backward / 2:.3f} s")
    for key, total in sorted(seconds.items(), key=lambda kv: -kv[1]):
        if total / 2 > 0.01:
            print(f"  {key}: {total / 2:.3f} s")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
