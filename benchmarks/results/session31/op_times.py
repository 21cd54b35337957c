"""Time per ATen op of a recipe's training step, measured around each call by a ``TorchDispatchMode`` (the
profiler inflated some large ops here 7-17x): mean per step over 5 steps after 3 warm-ups, the ops with the most
time first, each with its input shapes.

Run from the repository root, with the command's allocator settings in GLIBC_TUNABLES:
python benchmarks/results/session31/op_times.py THREADS [TOP] [RECIPE]"""
import collections
import sys
import time

sys.path[:0] = ["src", "."]
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from benchmarks.recipe_step import recipe_model, step_runner  # noqa: E402

torch.set_num_threads(int(sys.argv[1]))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
recipe = sys.argv[3] if len(sys.argv) > 3 else "hippocampus"
seconds: dict[tuple, float] = collections.defaultdict(float)
calls: collections.Counter = collections.Counter()


class Timer(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        key = (str(func), tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))[:3])
        seconds[key] += time.perf_counter() - start
        calls[key] += 1
        return out


model, cfg = recipe_model(recipe, 1, 3)
run = step_runner(model, cfg, 1, 3)
for _ in range(3):
    run()
steps = 5
with Timer():
    for _ in range(steps):
        run()
print(f"{recipe}, {sys.argv[1]} threads: {sum(seconds.values()) / steps * 1e3:.1f} ms of op time per step")
for key, total in sorted(seconds.items(), key=lambda kv: -kv[1])[:top]:
    print(f"{total / steps * 1e3:7.2f} ms {calls[key] // steps:4d}x {key[0]} {key[1]}")
