"""A 2x2x2 stride-2 transposed convolution's backward: both gradients, weight only, input only, and the weight
gradient from the adjoint convolution (what factorseg.models.layers.conv.conv_transpose uses), at the BraTS
preset's first up-sampling at 128^3 and the hippocampus's full resolution.

Run from the repository root: python benchmarks/results/session24/transposed_grad.py THREADS"""
import sys, time, torch
sys.path[:0] = ["src", "."]
from benchmarks.common import interleaved
torch.set_num_threads(int(sys.argv[1]))
def med(f, n=5):
    """Median milliseconds of ``n`` calls after a warm-up."""
    return interleaved({"f": f}, n, torch.device("cpu"))["f"].median * 1e3
cl = torch.channels_last_3d
for cz, c, shape in [(64, 32, (1, 128, 128, 128)), (32, 16, (4, 40, 56, 40))]:
    B, D, H, W = shape
    up = torch.nn.ConvTranspose3d(cz, c, 2, stride=2)
    z = torch.randn(B, cz, D // 2, H // 2, W // 2).contiguous(memory_format=cl)
    g = torch.randn(B, c, D, H, W).contiguous(memory_format=cl)
    def both():
        zz = z.clone().requires_grad_(); up.weight.grad = None
        up(zz).backward(g)
    def weight_only():
        up.weight.grad = None
        up(z).backward(g)
    def input_only():
        zz = z.clone().requires_grad_()
        up.weight.requires_grad_(False); up.bias.requires_grad_(False)
        up(zz).backward(g)
        up.weight.requires_grad_(True); up.bias.requires_grad_(True)
    def manual_dw():
        gl = g.movedim(1, -1)
        zl = z.movedim(1, -1).reshape(-1, cz)
        return [zl.t() @ gl[:, i::2, j::2, k::2].reshape(-1, c) for i in range(2) for j in range(2) for k in range(2)]
    def manual_dx():
        gl = g.movedim(1, -1)
        wk = up.weight.detach()
        out = None
        for i in range(2):
            for j in range(2):
                for k in range(2):
                    t = gl[:, i::2, j::2, k::2].reshape(-1, c) @ wk[:, :, i, j, k].t()
                    out = t if out is None else out.add_(t)
        return out
    print(shape, "both", round(med(both)), "weight", round(med(weight_only)), "input", round(med(input_only)), "manual dW", round(med(manual_dw)), "manual dx", round(med(manual_dx)))
    def via_conv_wgrad():
        return torch.ops.aten.convolution_backward(z, g, up.weight, None, [2, 2, 2], [0, 0, 0], [1, 1, 1], False, [0, 0, 0], 1, [False, True, False])[1]
    ref = None
    up.weight.grad = None; up(z).backward(g); ref = up.weight.grad.clone()
    print("   via conv wgrad", round(med(via_conv_wgrad)), "diff", (via_conv_wgrad() - ref).abs().max().item(),
          "manual diff", (torch.stack(manual_dw()).view(2,2,2,cz,c).permute(3,4,0,1,2) - ref).abs().max().item())
    down = torch.nn.Conv3d(c, cz, 2, stride=2, bias=False)
    def dw_only():
        down.weight.grad = None
        down(g).backward(z)
    def dx_only():
        gg = g.clone().requires_grad_(); down.weight.requires_grad_(False)
        down(gg).backward(z); down.weight.requires_grad_(True)
    print("   down: weight", round(med(dw_only)), "input", round(med(dx_only)), "fwd", round(med(lambda: down(g))))
