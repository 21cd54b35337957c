"""Could dropout masks come from PyTorch's own (OpenMP-parallel) integer ops instead of NumPy pieces on Python
threads? A timing model only: a SplitMix64-style finaliser over int64 counters (PyTorch's shifts are arithmetic on
int64, so these are not the real generator's numbers; the op count is the same) in 2 MiB blocks, then the 16-bit
comparison, against ``dropout.random_at_least``, for 16.8 M numbers; one and two threads, medians of 20 runs.

    PYTHONPATH=.:src python benchmarks/results/session30/torch_ops_generator.py
"""

from __future__ import annotations

import os

import torch

from benchmarks.common import cpu_medians, cpu_model, tune_allocator
from factorseg.models.layers.dropout import random_at_least

_GAMMA, _M1, _M2 = (v - (1 << 64) for v in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _words(seed: int, out: torch.Tensor, block: int = 1 << 18) -> torch.Tensor:
    for start in range(0, out.numel(), block):
        x = out[start:start + block]
        torch.arange(start, start + x.numel(), out=x)
        x.mul_(_GAMMA).add_(seed)
        for shift, mult in ((30, _M1), (27, _M2)):
            x.bitwise_xor_(x >> shift).mul_(mult)
        x.bitwise_xor_(x >> 31)
    return out


def main() -> None:
    tuned = tune_allocator()
    print("load", os.getloadavg(), cpu_model(), "allocator tuned", tuned)
    n = 1 << 24
    words, flags = torch.empty(n // 4, dtype=torch.int64), torch.empty(n, dtype=torch.bool)
    bound = round(0.1 * 65536) - 32768
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runs = {
            "torch-ops words": lambda: _words(12345, words),
            "torch-ops words + comparison": lambda: torch.ge(_words(12345, words).view(torch.int16), bound, out=flags),
            "random_at_least": lambda: random_at_least(flags, bound),
        }
        t = cpu_medians(runs, 20)
        print(f"threads {threads}: " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in t.items()))
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
