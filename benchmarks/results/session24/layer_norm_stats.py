"""native_layer_norm against a LayerNorm from saved statistics (layer_norm_from_stats's formula), per rows x channels
(microseconds). Run from the repository root: python benchmarks/results/session24/layer_norm_stats.py THREADS"""
import sys, time, torch
sys.path[:0] = ["src", "."]
from benchmarks.common import interleaved
torch.set_num_threads(int(sys.argv[1]))
def med(f, n=31):
    """Median microseconds of ``n`` calls after a warm-up."""
    return interleaved({"f": f}, n, torch.device("cpu"))["f"].median * 1e6  # microseconds
for R, C in ((16384, 16), (358400, 16), (8192, 32), (44800, 32)):
    x = torch.randn(R, C); w = torch.rand(C) + 0.5; b = torch.randn(C) * 0.1
    ref, mean, rstd = torch.ops.aten.native_layer_norm(x, [C], w, b, 1e-5)
    def saved(): return torch.addcmul(b, (x - mean).mul_(rstd), w)
    def saved2(): return (x - mean).mul_(rstd).mul_(w).add_(b)
    print(R, C, "native", round(med(lambda: torch.ops.aten.native_layer_norm(x, [C], w, b, 1e-5))), "saved", round(med(saved)), "saved2", round(med(saved2)), (saved() - ref).abs().max().item())
