"""Which ATen ops of a 128^3 BraTS-preset training step allocate blocks of at least 32 MiB (what glibc's default
allocator serves with a fresh ``mmap`` and page-faults in again every step), grouped by op and by the nearest
factorseg / torch.autograd caller: total MiB per step and number of allocations. Two cautions: buffers from the
layers' pool are made by ``torch.from_numpy``, which no ATen op records (a new pooled buffer shows as the pool's
``aten.empty``); and under any ``TorchDispatchMode`` autograd never sums two gradients in place, so the
"autograd engine" ``aten.add.Tensor`` rows overstate what a step without the mode allocates (profile
``aten::add`` with ``torch.profiler`` for that: ``benchmarks/results/session33/gradient_sums.py``).

Run from the repository root: python benchmarks/results/session33/large_allocations.py [SIZE] [TOP]"""
import sys
import traceback

sys.path[:0] = ["src", "."]
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from benchmarks.common import build, inputs, train_runner  # noqa: E402

LARGE = 32 << 20


class LargeAllocations(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.bytes: dict[tuple[str, str], int] = {}
        self.count: dict[tuple[str, str], int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        inputs_ = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        for t in outs:
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in inputs_:
                continue
            n = t.untyped_storage().nbytes()
            if n >= LARGE and "out" not in (kwargs or {}):
                where = "autograd engine"
                for frame in reversed(traceback.extract_stack()[:-1]):
                    if "factorseg" in frame.filename or "monai" in frame.filename or "torch/optim" in frame.filename:
                        where = f"{frame.filename.split('/')[-1]}:{frame.lineno} {frame.name}"
                        break
                key = (str(func), where)
                self.bytes[key] = self.bytes.get(key, 0) + n
                self.count[key] = self.count.get(key, 0) + 1
        return out


size = int(sys.argv[1]) if len(sys.argv) > 1 else 128
top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
torch.set_num_threads(1)
model = build("swin_factorizer", size)
x, y = inputs(size, torch.device("cpu"))
run = train_runner(model, x, y)
run()
with LargeAllocations() as rec:
    run()
total = sum(rec.bytes.values())
print(f"{size}^3 training step: {total / 2**20:,.0f} MiB in {sum(rec.count.values())} allocations of >= 32 MiB")
for key, n in sorted(rec.bytes.items(), key=lambda kv: -kv[1])[:top]:
    print(f"{n / 2**20:9,.0f} MiB {rec.count[key]:4d}x {key[0]:40s} {key[1]}")
