"""The dropout masks' random words: one generator (``random_`` on one thread, as before) against
:func:`factorseg.models.layers.dropout.random_words` (pieces of 2 MiB from their own generators, on
``torch.get_num_threads()`` threads), for the 1.43 M words of a hippocampus step's largest mask.
Tuned allocator; min and median of 20 calls.

    python benchmarks/results/session26/mask_words.py

``random_words`` was tried in commit 06121b3 and taken out in the next: run this in a worktree of that
commit (``git worktree add /tmp/wt 06121b3 && cd /tmp/wt && PYTHONPATH=src python benchmarks/results/session26/mask_words.py``).
The figures are in ``mask_words.txt``; the hippocampus step with it in ``ab_recipe_step_mask_threads.txt``.
"""

import time

import torch

from factorseg import allocator
from factorseg.models.layers.dropout import random_words

allocator.tune()
N = 1433600
forms = {
    "one generator": lambda: torch.empty(N, dtype=torch.int64).random_(-(2**63), None),
    "random_words": lambda: random_words(N),
}
for threads in (1, 2):
    torch.set_num_threads(threads)
    for name, run in [*forms.items(), *forms.items()]:
        for _ in range(3):
            run()
        times = []
        for _ in range(20):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        times.sort()
        print(f"{threads} thread(s)  {name:14s} min {times[0] * 1e3:6.2f} ms  median {times[10] * 1e3:6.2f} ms")
