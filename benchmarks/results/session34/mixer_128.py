"""The BraTS preset's mixer at 128^3 (32 channels, windows of 8 shifted by 4: boxes of parts of planes there), median
times over the calls after a warm-up. MODE ``project``: the in-projection box by box (``project_boxes``, inference)
and the whole mixer's forward pass; ``train``: a training step as the block runs it, dropout 0.1 with the mask drawn
beforehand, forward and backward timed apart. Run from the repository root or a worktree of another revision, with
the command's allocator settings in GLIBC_TUNABLES: python benchmarks/results/session34/mixer_128.py MODE"""
import os
import statistics
import sys
import time

sys.path[:0] = [os.getcwd() + "/src", os.getcwd()]
import torch  # noqa: E402

from factorseg.models.layers import subblock_boxes  # noqa: E402
from factorseg.models.layers.conv import pointwise_weight  # noqa: E402
from factorseg.models.layers.dropout import keep_mask_like  # noqa: E402
from factorseg.models.layers.mixer import NMFMixer  # noqa: E402
from factorseg.models.layers.nmf import NMFConfig  # noqa: E402
from factorseg.models.layers.windows import subblock_edges  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
mixer = NMFMixer(32, 3, head_dim=8, window_size=8, shifts=((0, 0, 0), (4, 4, 4)), nmf=NMFConfig(num_iters=5))
norm = torch.nn.LayerNorm(32)
x0 = torch.randn(1, 128, 128, 128, 32)
tree = os.path.basename(os.getcwd())


def median_ms(fn, calls: int, warm: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for rep in range(warm + calls):
        start = time.perf_counter()
        fn()
        if rep >= warm:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


if sys.argv[1] == "project":
    lay = mixer.matricize.layout_of(x0.movedim(-1, 1))
    edges = subblock_edges(lay)
    weights = mixer._v0_weights(lay, edges, x0.dtype)

    def project() -> None:
        with torch.no_grad():
            subblock_boxes.project_boxes(x0, (norm.weight, norm.bias, norm.eps), pointwise_weight(mixer.in_proj),
                                         mixer.in_proj.bias, lay, edges, 8, weights)

    def forward() -> None:
        with torch.no_grad():
            mixer(x0, norm=norm, channels_last=True, add_input=True)

    print(tree, f"in-projection {median_ms(project, 10, 3):.1f} ms, mixer forward {median_ms(forward, 10, 3):.1f} ms",
          os.getloadavg())
else:
    keep, grad = keep_mask_like(x0, 0.1), torch.ones_like(x0)
    fwd, bwd = [], []
    for rep in range(8):
        x = (x0 * 1.0).requires_grad_()
        start = time.perf_counter()
        out = mixer(x, norm=norm, channels_last=True, add_input=True, keep=keep)
        mid = time.perf_counter()
        out.backward(grad)
        if rep >= 2:
            fwd.append(mid - start)
            bwd.append(time.perf_counter() - mid)
    print(tree, f"forward {statistics.median(fwd) * 1e3:.1f} ms, backward {statistics.median(bwd) * 1e3:.1f} ms",
          os.getloadavg())
