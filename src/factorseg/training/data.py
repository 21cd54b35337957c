"""Seeded training data: every patch is a pure function of (seed, epoch, position).

Each item the sampler yields carries its own random seed, so augmentation does not depend on
worker processes or on a run having been interrupted: a resumed run sees exactly the patches an
uninterrupted run would have seen. Under DDP each rank takes its own slice of the epoch's order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.transforms import Compose, Randomizable
from rich.progress import track
from torch.utils.data import Dataset, Sampler


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from several integers (stable across platforms and processes)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(case index, item seed)`` for ``items_per_rank`` items of each epoch.

    Cases are visited in seeded permutations (every case once before any repeats); Lightning calls
    ``set_epoch`` at the start of each epoch.
    """

    def __init__(self, num_cases: int, items_per_rank: int, seed: int, shuffle: bool = True) -> None:
        self.num_cases, self.items_per_rank, self.seed, self.shuffle = num_cases, items_per_rank, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.items_per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, world = _rank_world()
        total = self.items_per_rank * world
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch))
        order: list[int] = []
        while len(order) < total:
            order.extend(rng.permutation(self.num_cases).tolist() if self.shuffle else range(self.num_cases))
        for position in range(rank, total, world):
            yield order[position], derive_seed(self.seed, self.epoch, position)


def _split_random(transforms: Compose) -> tuple[Compose, Compose]:
    """The deterministic head of a pipeline (cacheable) and the rest, which starts at the first random step."""
    steps = list(transforms.transforms)
    cut = next((i for i, t in enumerate(steps) if isinstance(t, Randomizable)), len(steps))
    return Compose(steps[:cut]), Compose(steps[cut:])


def _shallow_clone(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _shallow_clone(v) for k, v in data.items()}
    if isinstance(data, torch.Tensor):
        return data.clone()
    return data


class CaseDataset(Dataset):
    """Cases through a MONAI pipeline, with the deterministic part optionally cached in memory.

    Indexed by ``(case index, seed)`` pairs from :class:`EpochSampler` (training) or by a plain
    case index (validation, where nothing is random).
    """

    def __init__(self, cases: Sequence[dict[str, Any]], transforms: Compose, cache: bool, desc: str = "",
                 progress: bool = True) -> None:
        self.cases = list(cases)
        self.head, self.tail = _split_random(transforms)
        self.cached: list[Any] | None = None
        if cache:
            self.cached = [self.head(dict(c)) for c in track(self.cases, description=desc or "Caching", transient=True, disable=not progress)]

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        data = _shallow_clone(self.cached[index]) if self.cached is not None else self.head(dict(self.cases[index]))
        self.tail.set_random_state(seed=seed)
        return self.tail(data)
