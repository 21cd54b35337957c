"""How much of the hippocampus recipe's training step on two threads goes to drawing dropout masks
(``dropout.random_at_least``): step time, mask time, calls and numbers per step, mean of 5 steps after 3.

    python benchmarks/results/session32/mask_time.py   # from the repository root, with the command's allocator settings
"""
import os
import sys
import time

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

import factorseg.models.layers.dropout as dropout  # noqa: E402
from benchmarks.recipe_step import recipe_model, step_runner  # noqa: E402

torch.set_num_threads(2)
draw = dropout.random_at_least
spent = {"seconds": 0.0, "calls": 0, "numbers": 0}


def timed(out: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = draw(out, *args, **kwargs)
    spent["seconds"] += time.perf_counter() - start
    spent["calls"] += 1
    spent["numbers"] += out.numel()
    return result


dropout.random_at_least = timed
model, cfg = recipe_model("hippocampus", 1, 3)
step = step_runner(model, cfg, 1, 3)
for _ in range(3):
    step()
spent.update(seconds=0.0, calls=0, numbers=0)
print("load", os.getloadavg())
start = time.perf_counter()
for _ in range(5):
    step()
print(f"step {(time.perf_counter() - start) / 5 * 1e3:.0f} ms; masks {spent['seconds'] / 5 * 1e3:.1f} ms in "
      f"{spent['calls'] / 5:.0f} calls, {spent['numbers'] / 5 / 1e6:.1f} M numbers per step")
print("load", os.getloadavg())
