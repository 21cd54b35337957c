"""Time per ATen op of a 128^3 forward pass (eval, inference mode, batch 1, 4 -> 3 channels), measured around
each call (``benchmarks.common.OpTimes``): mean per pass over 3 passes after 2 warm-ups, the ops with the most time
first, each with its input shapes.

Run from the repository root, with the command's allocator settings in GLIBC_TUNABLES:
python benchmarks/results/session32/forward_op_times.py THREADS [TOP] [MODEL] [SIZE]"""
import sys
import time

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from benchmarks.common import OpTimes, build, forward_runner, inputs  # noqa: E402

torch.set_num_threads(int(sys.argv[1]))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
name = sys.argv[3] if len(sys.argv) > 3 else "swin_factorizer"
size = int(sys.argv[4]) if len(sys.argv) > 4 else 128
run = forward_runner(build(name, size), inputs(size, torch.device("cpu"))[0])
for _ in range(2):
    run()
passes = 3
start = time.perf_counter()
with OpTimes() as timer:
    for _ in range(passes):
        run()
wall = (time.perf_counter() - start) / passes
print(f"{name} {size}^3, {sys.argv[1]} threads: {sum(timer.seconds.values()) / passes * 1e3:.1f} ms of op time, "
      f"{wall * 1e3:.1f} ms wall per pass")
print(timer.report(passes, top))
