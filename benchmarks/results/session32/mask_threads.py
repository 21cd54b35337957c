"""The hippocampus recipe's training step on two threads with its dropout masks drawn as before session 32 (every
piece on pool threads while the calling thread waits: emulated by calling ``random_at_least`` from another thread)
and as now (the calling thread takes pieces too), interleaved in one process: step time and the masks' time per step
(medians of 6 rounds), and that both draw the same masks.

    python benchmarks/results/session32/mask_threads.py   # from the repository root, with the command's allocator settings
"""
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path[:0] = ["src", "."]
import torch  # noqa: E402

import factorseg.models.layers.dropout as dropout  # noqa: E402
from benchmarks.recipe_step import recipe_model, step_runner  # noqa: E402

torch.set_num_threads(2)
now = dropout.random_at_least
outer = ThreadPoolExecutor(1)


def before(out: torch.Tensor, *args, **kwargs) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return outer.submit(now, out, *args, **kwargs).result()


for n in (5, 3 * 2**20 + 7):
    masks = [f(torch.empty(n, dtype=torch.bool), -20000, torch.Generator().manual_seed(3)) for f in (before, now)]
    assert torch.equal(*masks)
spent = [0.0]


def timed(f):  # type: ignore[no-untyped-def]
    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        result = f(*args, **kwargs)
        spent[0] += time.perf_counter() - start
        return result

    return run


model, cfg = recipe_model("hippocampus", 1, 3)
step = step_runner(model, cfg, 1, 3)
forms = {"caller waits (before)": timed(before), "caller takes pieces (now)": timed(now)}
for f in forms.values():
    dropout.random_at_least = f
    step()
    step()
steps: dict[str, list[float]] = {k: [] for k in forms}
masks: dict[str, list[float]] = {k: [] for k in forms}
for _ in range(6):
    for k, f in forms.items():
        dropout.random_at_least, spent[0] = f, 0.0
        start = time.perf_counter()
        step()
        steps[k].append(time.perf_counter() - start)
        masks[k].append(spent[0])
for k in forms:
    s, m = sorted(steps[k]), sorted(masks[k])
    print(f"{k}: step min {s[0] * 1e3:.0f} median {s[3] * 1e3:.0f} ms; masks median {m[3] * 1e3:.1f} ms")
