"""Time per ATen op of a 128^3 forward pass (eval, inference mode, batch 1, 4 -> 3 channels), measured around
each call by a ``TorchDispatchMode``: mean per pass over 3 passes after 2 warm-ups, the ops with the most time
first, each with its input shapes.

Run from the repository root, with the command's allocator settings in GLIBC_TUNABLES:
python benchmarks/results/session32/forward_op_times.py THREADS [TOP] [MODEL] [SIZE]"""
import collections
import sys
import time

sys.path[:0] = ["src", "."]
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from benchmarks.common import build, forward_runner, inputs  # noqa: E402

torch.set_num_threads(int(sys.argv[1]))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
name = sys.argv[3] if len(sys.argv) > 3 else "swin_factorizer"
size = int(sys.argv[4]) if len(sys.argv) > 4 else 128
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


run = forward_runner(build(name, size), inputs(size, torch.device("cpu"))[0])
for _ in range(2):
    run()
passes = 3
start = time.perf_counter()
with Timer():
    for _ in range(passes):
        run()
wall = (time.perf_counter() - start) / passes
print(f"{name} {size}^3, {sys.argv[1]} threads: {sum(seconds.values()) / passes * 1e3:.1f} ms of op time, "
      f"{wall * 1e3:.1f} ms wall per pass")
for key, total in sorted(seconds.items(), key=lambda kv: -kv[1])[:top]:
    print(f"{total / passes * 1e3:7.2f} ms {calls[key] // passes:4d}x {key[0]} {key[1]}")
