"""Per-run page faults and glibc heap state of the BraTS preset's forward, tuned allocator.

Run from the repository root: python benchmarks/results/session25/heap_probe.py THREADS SIZE [SIZE ...]
(the sizes are run in turn, three rounds). Prints each run's time, minor faults (MiB), and glibc's
``mallinfo2``: heap size from ``brk`` (arena), free bytes in it (fordblks), releasable top (keepcost)."""
import ctypes, resource, sys, time
sys.path[:0] = ["src", "."]
import torch
from factorseg import allocator
from benchmarks.common import build, inputs

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
print("tuned", allocator.tune())
torch.set_num_threads(int(sys.argv[1]))
sizes = [int(s) for s in sys.argv[2:]]
torch.manual_seed(0)
model = build("swin_factorizer", 128).eval()
xs = {s: inputs(s, torch.device("cpu"))[0] for s in sizes}
page = resource.getpagesize() / 2**20
for r in range(3):
    for s in sizes:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(xs[s])
        t = time.perf_counter() - t0
        f = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) * page
        mi = libc.mallinfo2()
        print(f"round {r} {s}^3 {t:6.2f} s {1e9 * t / s**3:6.0f} ns/vox faults {f:7.0f} MiB  arena {mi.arena / 2**20:7.0f} "
              f"free {mi.fordblks / 2**20:7.0f} top {mi.keepcost / 2**20:7.0f} mmap {mi.hblkhd / 2**20:5.0f} MiB", flush=True)
