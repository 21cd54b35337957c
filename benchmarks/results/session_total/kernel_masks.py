import torch, time, statistics, sys
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[3] / 'src'))
from factorseg import allocator; allocator.tune()
torch.set_num_threads(1)
x = torch.randn(262144, 64)
keep = torch.rand(262144, 64) > 0.1
scale = 1 / 0.9
mf16 = keep.to(torch.float16) * scale
mbf16 = keep.to(torch.bfloat16) * scale
mf32 = keep.float() * scale
u8 = keep.view(torch.uint8)
blocks = torch.relu(torch.randn(262144, 64))
def t(f, n=9):
    f(); f(); ts = []
    for _ in range(n):
        a = time.perf_counter(); f(); ts.append(time.perf_counter() - a)
    return statistics.median(ts) * 1000
zero = x.new_zeros(())
ref = torch.where(keep, x, zero) * scale
print('where+mul_', t(lambda: torch.where(keep, x, zero).mul_(scale)))
print('where only', t(lambda: torch.where(keep, x, zero)))
print('x*mf16', t(lambda: x * mf16), (x*mf16 - ref).abs().max().item())
print('x*mbf16', t(lambda: x * mbf16))
print('x*mf32', t(lambda: x * mf32))
print('x*u8', t(lambda: x * u8))
print('masked_fill', t(lambda: x.masked_fill(~keep, 0)))
print('where(blocks>0)', t(lambda: torch.where(blocks > 0, x, 0.0)))
print('threshold_backward', t(lambda: torch.ops.aten.threshold_backward(x, blocks, 0)))
print('clone', t(lambda: x.clone()))
print('mul scalar', t(lambda: x * scale))
