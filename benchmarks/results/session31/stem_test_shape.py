"""The stem at tests/test_resume.py's shape (4 -> 8 and 4 -> 32 channels, batch 1, 32^3), timed the way the removed
``conv._padded_is_faster`` timed it (best of two after a warm-up, forward), five times: unpadded vs zero-padded input.

Run from the repository root: python benchmarks/results/session31/stem_test_shape.py. Output: stem_test_shape.txt."""
import sys
import time

sys.path[:0] = ["src", "."]
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from factorseg.models.layers.conv import channels_last  # noqa: E402

torch.set_num_threads(1)


def best_of_two(run) -> float:
    run()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


for cout in (8, 32):
    conv = torch.nn.Conv3d(4, cout, 3, padding=1, bias=False)
    x = channels_last(torch.randn(1, 4, 32, 32, 32))
    for _ in range(5):
        with torch.no_grad():
            plain = best_of_two(lambda: channels_last(conv(x)))
            padded = best_of_two(lambda: F.conv3d(channels_last(F.pad(x, (0,) * 6 + (0, 4))),
                                                  F.pad(conv.weight, (0,) * 6 + (0, 4)), None, 1, 1))
        print(f"4 -> {cout} channels: unpadded {plain * 1e3:.2f} ms, padded {padded * 1e3:.2f} ms, "
              f"unpadded / padded {plain / padded:.2f}", flush=True)
