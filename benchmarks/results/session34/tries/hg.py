import sys, time, statistics
sys.path[:0] = ["src", "."]
import torch
from factorseg.models.layers.nmf import head_grams
torch.set_num_threads(int(sys.argv[1]))
n, q, c, m = 7840, 8, 16, 8
rows = torch.rand(n, q, c)
grams = torch.empty(4, 1, 2, 11200*4, m, m)
k = slice(0, n)
def cur(): grams[0, 0, :, k] = head_grams(rows, m)
def perhead():
    for h in range(2):
        cols = rows[:, :, h*m:(h+1)*m]
        torch.bmm(cols.transpose(1, 2), cols, out=grams[0, 0, h, k])
def bench(f, r=300):
    for _ in range(10): f()
    ts=[]
    for _ in range(r):
        s=time.perf_counter(); f(); ts.append(time.perf_counter()-s)
    return statistics.median(ts)*1e6
cur(); a=grams[0,0,:,k].clone(); perhead(); print("same:", torch.allclose(a, grams[0,0,:,k]))
print("current", bench(cur), "per head out=", bench(perhead))
