"""Dropout keep-masks of several sizes, before (a worktree of ad1efc8 at /tmp/wt_base: one PyTorch generator
call per mask, then the comparison) and after (this checkout), one and two threads, medians of 21. The first output
(mask_threads.txt) is bd8e644's MT19937 words in seeded pieces on all threads; the second (mask_threads_pcg.txt) the
PCG64DXSM pieces each compared into the mask in the cache.

    PYTHONPATH=. python benchmarks/results/session28/mask_threads.py   # with the factorseg command's allocator settings
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from benchmarks.common import interleaved

ROOT = Path(__file__).resolve().parents[3]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    print("load", os.getloadavg())
    rel = Path("src/factorseg/models/layers/dropout.py")
    before, after = load(Path("/tmp/wt_base") / rel, "before"), load(ROOT / rel, "after")
    cpu = torch.device("cpu")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for n in (2**26, 2**23, 5_734_400, 2**20):
            runs = {name: (lambda m=m: m.keep_mask((n,), 0.1, cpu)) for name, m in (("before", before), ("after", after))}
            t = {k: 1e3 * v.median for k, v in interleaved(runs, 21, cpu).items()}
            print(f"{threads} thread(s), {n} elements: before {t['before']:.2f} ms, after {t['after']:.2f} ms")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
