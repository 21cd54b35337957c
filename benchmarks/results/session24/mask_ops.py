"""Dropout masking on a cache-sized row block (16,384 x 32 / x 16): where, masked_fill, products with boolean,
uint8 and float masks, the conversions, mask drawing (microseconds). Run from the repository root:
python benchmarks/results/session24/mask_ops.py THREADS"""
import sys, time, torch
sys.path[:0] = ["src", "."]
from benchmarks.common import interleaved
torch.set_num_threads(int(sys.argv[1]))
def med(f, n=51):
    """Median microseconds of ``n`` calls after a warm-up."""
    return interleaved({"f": f}, n, torch.device("cpu"))["f"].median * 1e6  # microseconds
R, H, C = 16384, 32, 16
normed = torch.randn(R, C); w1 = torch.randn(H, C); b1 = torch.randn(H)
keep = torch.rand(R, H) > 0.1; drop = ~keep
z = torch.randn(R, C); k2 = torch.rand(R, C) > 0.1; d2 = ~k2
print("hidden: where+addmm_", med(lambda: torch.where(keep, b1, -1e12).addmm_(normed, w1.t())))
print("hidden: addmm+masked_fill_", med(lambda: torch.addmm(b1, normed, w1.t()).masked_fill_(drop, -1e12)))
print("hidden: addmm only", med(lambda: torch.addmm(b1, normed, w1.t())))
print("hidden: where(keep,b1,-1e12) alone", med(lambda: torch.where(keep, b1, -1e12)))
print("out: where(k2,z,0)", med(lambda: torch.where(k2, z, z.new_zeros(()))))
print("out: z.masked_fill(d2,0)", med(lambda: z.masked_fill(d2, 0)))
zz = z.clone()
print("out: zz.masked_fill_(d2,0) inplace", med(lambda: zz.masked_fill_(d2, 0)))
print("out: z*k2", med(lambda: z * k2))
print("ln", med(lambda: torch.ops.aten.native_layer_norm(z, [C], b1[:C], b1[:C], 1e-5)))
print("gelu_ 32", med(lambda: torch.ops.aten.gelu_(torch.addmm(b1, normed, w1.t()))))
g = torch.randn(R, H)
ku8 = keep.view(torch.uint8)
kf = keep.float()
print("g.mul_(keep)", med(lambda: g.mul_(keep)))
print("g.mul_(keep u8)", med(lambda: g.mul_(ku8)))
print("g.mul_(keepf)", med(lambda: g.mul_(kf)))
print("keep.float()", med(lambda: keep.float()))
print("keep.to(float) via u8", med(lambda: ku8.float()))
print("g*keep (new)", med(lambda: g * keep))
print("addcmul", med(lambda: torch.addcmul(z, z, k2)))
print("random int64 4096", med(lambda: torch.empty(R * H // 4, dtype=torch.int64).random_(-(2**63), None)))
w = torch.empty(R * H // 4, dtype=torch.int64).random_(-(2**63), None)
print("ge int16", med(lambda: w.view(torch.int16) >= -30000))
print("gelu_backward", med(lambda: torch.ops.aten.gelu_backward(g, g)))
