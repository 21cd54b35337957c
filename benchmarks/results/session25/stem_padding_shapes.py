"""The stem convolution (few input channels -> 32, 3x3x3, channels-last input) with its input channels padded to 8
(what conv_padded_input did before 2026-12-06, night) or not (stem_conv): forward and forward + backward medians (ms).

Run from the repository root: python benchmarks/results/session25/stem_padding_shapes.py THREADS SET
SET: sizes (4 and 3 channels, batch 1 at 48-160^3, batch 2 at 96^3, two non-cubic maps) or recipes (4 and 2
channels at 128^3 and 64^3, batch 1 and 2). Tuned allocator. Outputs: stem_padding_shapes.txt.
``time_stem`` also serves benchmarks/results/session31/stem_recipe_shapes.py."""
import sys

sys.path[:0] = ["src", "."]
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import interleaved  # noqa: E402
from factorseg.models.layers.conv import channels_last  # noqa: E402

SETS = {
    "sizes": ([4, 3], [(1, 48), (1, 64), (1, 80), (1, 112), (1, 160), (2, 96), (1, (64, 64, 96)), (1, (128, 128, 64))]),
    "recipes": ([4, 2], [(1, 128), (2, 128), (2, 64), (1, 64)]),
}


def time_stem(cin: int, cout: int, batch: int, spatial: tuple[int, ...], bias: bool = False,
              repeats: int = 5) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds of the padded ("pad") and unpadded ("plain") stem kernels: forward, forward + backward."""
    conv = torch.nn.Conv3d(cin, cout, 3, padding=1, bias=bias)
    x = channels_last(torch.randn(batch, cin, *spatial))
    extra = -cin % 8

    def fb(f):
        def g():
            conv.weight.grad = None
            y = f()
            y.backward(torch.ones_like(y))
        return g

    pad = lambda: F.conv3d(channels_last(F.pad(x, (0, 0, 0, 0, 0, 0, 0, extra))),  # noqa: E731
                           F.pad(conv.weight, (0, 0, 0, 0, 0, 0, 0, extra)), conv.bias, 1, 1)
    plain = lambda: channels_last(conv(x))  # noqa: E731
    t = interleaved({"pad": fb(pad), "plain": fb(plain)}, repeats, torch.device("cpu"))
    with torch.no_grad():
        tf = interleaved({"pad": pad, "plain": plain}, repeats, torch.device("cpu"))
    return {k: v.median for k, v in tf.items()}, {k: v.median for k, v in t.items()}


if __name__ == "__main__":
    from factorseg import allocator

    allocator.tune()
    torch.set_num_threads(int(sys.argv[1]))
    channels, shapes = SETS[sys.argv[2]]
    for cin in channels:
        for b, s in shapes:
            spatial = (s,) * 3 if isinstance(s, int) else s
            tf, t = time_stem(cin, 32, b, spatial)
            print(f"{sys.argv[1]} threads, {cin} channels, batch {b}, {'x'.join(map(str, spatial))}: forward "
                  f"padded/plain {tf['pad'] * 1e3:6.1f}/{tf['plain'] * 1e3:6.1f} ms, forward + backward "
                  f"{t['pad'] * 1e3:6.1f}/{t['plain'] * 1e3:6.1f} ms", flush=True)
