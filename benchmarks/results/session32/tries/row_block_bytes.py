"""The 128^3 forward (BraTS preset) or the hippocampus recipe's training step with several row-block sizes per
thread (``fastpath.ROW_BLOCK_BYTES``), interleaved in one process: min and median per size.

    python benchmarks/results/session32/tries/row_block_bytes.py forward|step THREADS MIB,MIB,... ROUNDS"""
import sys
import time

import torch

sys.path[:0] = ["src", "."]
import factorseg.models.layers.fastpath as fp  # noqa: E402
from benchmarks.common import build, forward_runner, inputs  # noqa: E402
from benchmarks.recipe_step import recipe_model, step_runner  # noqa: E402

mode, threads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[4])
torch.set_num_threads(threads)
sizes = [int(float(s) * 2**20) for s in sys.argv[3].split(",")]
if mode == "forward":
    run = forward_runner(build("swin_factorizer", 128), inputs(128, torch.device("cpu"))[0])
else:
    model, cfg = recipe_model("hippocampus", 1, 3)
    run = step_runner(model, cfg, 1, 3)
for s in sizes:  # a warm-up with each size
    fp.ROW_BLOCK_BYTES = s
    run()
res: dict[int, list[float]] = {s: [] for s in sizes}
for _ in range(rounds):
    for s in sizes:
        fp.ROW_BLOCK_BYTES = s
        start = time.perf_counter()
        run()
        res[s].append(time.perf_counter() - start)
for s, times in res.items():
    times.sort()
    print(f"{s / 2**20:5.2f} MiB/thread: min {times[0] * 1e3:.0f} med {times[len(times) // 2] * 1e3:.0f} ms")
