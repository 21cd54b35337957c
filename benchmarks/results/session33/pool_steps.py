"""Training steps of the BraTS preset with glibc's default allocator: seconds, MiB page-faulted, and the layers' buffer
pool per step (MiB held and peak leased, free buffers, leases that made a new buffer and their MiB), with the pool's
``SLACK`` set as given (1.0: hold no more than the peak leased).

Run from the repository root: python benchmarks/results/session33/pool_steps.py SIZE STEPS SLACK"""
import resource
import sys
import time

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

from benchmarks.common import build, inputs, train_runner  # noqa: E402
from factorseg.models.layers import pool  # noqa: E402

size, steps, pool.SLACK = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
torch.set_num_threads(1)
model = build("swin_factorizer", size)
x, y = inputs(size, torch.device("cpu"))
run = train_runner(model, x, y)
p = pool.pool()
new = [0, 0]
lease = pool.BufferPool.lease


def counted(self, n, *args, **kwargs):  # type: ignore[no-untyped-def]
    held, free = self.held, len(self._free)
    out = lease(self, n, *args, **kwargs)
    if self.held != held or len(self._free) != free - 1:
        new[0] += 1
        new[1] += n
    return out


pool.BufferPool.lease = counted
print(f"{size}^3, slack {pool.SLACK}")
for i in range(steps):
    new[:] = [0, 0]
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    run()
    faulted = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) * 4096 >> 20
    print(f"step {i}: {time.perf_counter() - start:.1f} s, {faulted} MiB faulted, held {p.held >> 20} MiB, peak leased "
          f"{p.peak_leased >> 20} MiB, {len(p._free)} free, {new[0]} new buffers ({new[1] >> 20} MiB)", flush=True)
