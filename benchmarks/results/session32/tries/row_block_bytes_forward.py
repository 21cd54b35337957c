import sys, time, torch
sys.path[:0]=["src","."]
from benchmarks.common import build, forward_runner, inputs
import factorseg.models.layers.fastpath as fp
torch.set_num_threads(int(sys.argv[1]))
size=int(sys.argv[2]); sizes=[int(float(s)*2**20) for s in sys.argv[3].split(",")]
run=forward_runner(build("swin_factorizer",size), inputs(size, torch.device("cpu"))[0])
ref=run()
res={s:[] for s in sizes}
for s in sizes:
    fp.ROW_BLOCK_BYTES=s; out=run(); print(s, (out-ref).abs().max().item())
for r in range(int(sys.argv[4])):
    for s in sizes:
        fp.ROW_BLOCK_BYTES=s
        t=time.perf_counter(); run(); res[s].append(time.perf_counter()-t)
for s in sizes:
    v=sorted(res[s]); print(f"{s/2**20:5.2f} MiB/thread: min {v[0]*1e3:.0f} med {v[len(v)//2]*1e3:.0f} ms")
