"""The out-of-place sums (``aten::add``) of 5-D maps in a BraTS-preset training step, by ``torch.profiler`` (which, unlike
a ``TorchDispatchMode``, leaves autograd's in-place gradient sums alone): each sum's input shapes and, for autograd's
own gradient sums, the node whose gradient arrived second (the forward pass's sums, such as bias additions, have
none). A sum of two full-resolution maps is a new map-sized allocation (page-faulted anew each step
with glibc's default allocator) where autograd could have added into the first gradient.

Run from the repository root: python benchmarks/results/session33/gradient_sums.py [SIZE] [THREADS]"""
import sys

sys.path[:0] = ["src", "."]
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.common import build, inputs, train_runner  # noqa: E402

size = int(sys.argv[1]) if len(sys.argv) > 1 else 64
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
model = build("swin_factorizer", size)
x, y = inputs(size, torch.device("cpu"))
run = train_runner(model, x, y)
run()
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    run()
sums = [e for e in prof.events() if e.name == "aten::add" and e.input_shapes and len(e.input_shapes[0]) == 5]
for e in sums:
    print(e.input_shapes[:2], e.cpu_parent.name if e.cpu_parent else "")
mib = sum(torch.Size(e.input_shapes[0]).numel() * 4 for e in sums) / 2**20
print(f"{size}^3 training step: {len(sums)} out-of-place sums of 5-D maps, {mib:,.0f} MiB")
