"""Time per ATen op of a recipe's training step, measured around each call by a ``TorchDispatchMode``
(``benchmarks.common.OpTimes``; the profiler inflated some large ops here 7-17x): mean per step over 5 steps after 3
warm-ups, the ops with the most time first, each with its input shapes.

Run from the repository root, with the command's allocator settings in GLIBC_TUNABLES:
python benchmarks/results/session31/op_times.py THREADS [TOP] [RECIPE]"""
import sys

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from benchmarks.common import OpTimes  # noqa: E402
from benchmarks.recipe_step import recipe_model, step_runner  # noqa: E402

torch.set_num_threads(int(sys.argv[1]))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
recipe = sys.argv[3] if len(sys.argv) > 3 else "hippocampus"
model, cfg = recipe_model(recipe, 1, 3)
run = step_runner(model, cfg, 1, 3)
for _ in range(3):
    run()
steps = 5
with OpTimes() as timer:
    for _ in range(steps):
        run()
print(f"{recipe}, {sys.argv[1]} threads: {sum(timer.seconds.values()) / steps * 1e3:.1f} ms of op time per step")
print(timer.report(steps, top))
