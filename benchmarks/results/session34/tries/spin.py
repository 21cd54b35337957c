import sys, time, statistics
sys.path[:0] = ["src", "."]
import torch
from factorseg.models.layers import dropout
torch.set_num_threads(2)
a=torch.randn(2048,2048); 
small=[torch.empty(2_700_000, dtype=torch.bool) for _ in range(25)]
big=torch.empty(67_500_000, dtype=torch.bool)
def per_call():
    t=0
    for o in small:
        a@a  # an OpenMP op right before, as in the step
        s=time.perf_counter(); dropout.random_at_least(o, -26214); t+=time.perf_counter()-s
    return t
def one_call():
    for o in small: a@a
    s=time.perf_counter(); dropout.random_at_least(big, -26214); return time.perf_counter()-s
def no_omp():
    s=time.perf_counter()
    for o in small: dropout.random_at_least(o, -26214)
    return time.perf_counter()-s
for f in (per_call, one_call, no_omp):
    f()
    print(f.__name__, "%.1f ms" % (statistics.median([f() for _ in range(7)])*1e3))
real=torch.get_num_threads
def main_only():
    torch.get_num_threads = lambda: 1
    try: return per_call()
    finally: torch.get_num_threads = real
def main_only_noomp():
    torch.get_num_threads = lambda: 1
    try: return no_omp()
    finally: torch.get_num_threads = real
for f in (main_only, main_only_noomp, per_call):
    f()
    print(f.__name__, "%.1f ms" % (statistics.median([f() for _ in range(7)])*1e3))
