"""CPU dropout from 64-bit random words, and the keep-masks it draws (shared with the MLP's memory diet)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from factorseg.models.layers import pool
from factorseg.models.layers.fastpath import block_rows, traced


class Dropout(nn.Dropout):
    """``nn.Dropout`` with CPU masks from 64-bit random words (forward + backward 5.7x faster on the CPU).

    On the CPU, PyTorch draws dropout masks at about 100 million per second (one generator call and
    a float comparison per element), which made dropout the largest single cost of a Factorizer
    training step at full resolution (three masks per block, over 250 million numbers at 128^3).
    Here each element gets a uniform 16-bit number (:func:`random_at_least`: PCG64DXSM generators seeded
    from PyTorch's default one, so ``torch.manual_seed`` makes the masks reproducible, run on all of
    PyTorch's threads; about one 64-bit random word per eight numbers; masks 13x faster to draw than
    ``bernoulli_``, ``benchmarks/results/session29/mask_vs_bernoulli.py``), an element is kept when its
    number is at least ``round(p 2^16)``, and
    kept values are scaled by the inverse of the exact keep probability (``p`` is rounded to a
    multiple of ``2^-16``). Other devices, in-place use and graph capture use ``F.dropout``. Same
    state dict as ``nn.Dropout``. Timings (two threads, tuned allocator): forward + backward over
    ``(1, 96, 96, 96, 64)`` 51 against 292 ms (``benchmarks/dropout.py``); masks
    ``benchmarks/results/session29/mask_vs_bernoulli.py``.
    """

    def draws_own_mask(self, x: Tensor) -> bool:
        """Whether a training call on ``x`` draws a :func:`keep_mask_like` mask (else it is ``F.dropout``'s, or none)."""
        return self.training and 0 < self.p < 1 and self._own_kernel(x)

    def _own_kernel(self, x: Tensor) -> bool:
        return not self.inplace and x.device.type == "cpu" and not traced()

    def forward(self, x: Tensor) -> Tensor:
        if self.draws_own_mask(x):
            return drop_with(x, keep_mask_like(x, self.p))
        if self.training and self.p == 1 and self._own_kernel(x):
            return x * 0.0
        return super().forward(x)


Keep = tuple[Tensor, float]
"""A dropout keep-mask (``bool``, from :func:`keep_mask`) and the scale of kept values."""


def drop_with(x: Tensor, keep: Keep) -> Tensor:
    """Dropout of ``x`` with a given keep-mask (:func:`masked`), differentiable, saving only the mask."""
    return _KeepScale.apply(x, *keep)


def keep_mask_like(x: Tensor, p: float) -> tuple[Tensor, float]:
    """:func:`keep_mask` for ``x``, drawn in ``x``'s memory order (the same as ``x.shape`` for contiguous ``x``).

    Masking a channels-last map with a mask in channels-first order reads one of the two across
    strides (1.7x slower at 64^3 x 32 channels); a mask laid out like ``x`` is read in step with it.
    """
    order = _memory_order(x)
    keep, scale = keep_mask([x.shape[d] for d in order], p, x.device)
    return keep.permute([order.index(d) for d in range(x.dim())]), scale


def keep_mask(
    shape: Sequence[int], p: float, device: torch.device, generator: torch.Generator | None = None
) -> tuple[Tensor, float]:
    """A dropout keep-mask (``bool``) of ``shape`` and the scale of kept values, for ``0 < p < 1``.

    CPU: uniform 16-bit numbers at least ``round(p 2^16)`` (see :class:`Dropout` and :func:`random_at_least`;
    ``p`` rounded to a multiple of ``2^-16``, at most ``1 - 2^-16``); other devices: ``bernoulli_``.
    ``generator`` (on ``device``) makes the mask reproducible; on the CPU the same seed gives the same mask at
    any thread count.
    """
    n = math.prod(shape)
    if device.type == "cpu":
        threshold = min(round(p * 65536), 65535)  # a p within 2^-17 of 1 would keep nothing (and scale by 1/0)
        keep = random_at_least(pool.empty((n,), torch.bool), threshold - 32768, generator)
        return keep.view(*shape), 65536 / (65536 - threshold)
    keep = torch.empty(*shape, device=device).bernoulli_(1.0 - p, generator=generator).bool()
    return keep, 1.0 / (1.0 - p)


NUMBERS_PER_PIECE = 2**20
"""Random 16-bit numbers (2 MiB) per independently seeded piece of :func:`random_at_least`."""

HELPED_FROM_PIECES = 16
"""Pieces from which :func:`random_at_least` fills a mask on helper threads too. Right after an OpenMP op (where
the layers draw their masks) the op's worker spins on the other core for a few milliseconds, and a helper there
only competes with it, then delays the next op's worker. Two threads, after a product (``benchmarks/results/
session34/mask_helpers.py``, ``mask_helpers.txt``): with a helper, 1.0-5.7 M numbers took 1.05-1.12x the calling
thread's time alone, 11.5 M 0.97x, 23 M 0.82x, 46 M 0.73x. (The hippocampus recipe's masks, at most 11.5 M numbers
each: its step level within the noise, ``tries/toggle3.py`` there.)"""


def random_at_least(out: Tensor, bound: int, generator: torch.Generator | None = None) -> Tensor:
    """Fill a 1D ``bool`` CPU tensor with ``u >= bound`` for independent uniform 16-bit signed numbers ``u``.

    PyTorch's CPU generator (MT19937) fills a tensor on one thread at about 4 ns per 64-bit word, and the
    comparison is a second pass: the masks of a 128^3 BraTS training step (803 M numbers) took over a
    second. Here the numbers come in pieces of :data:`NUMBERS_PER_PIECE`, each from its own PCG64DXSM
    generator (NumPy's ``random_raw``) seeded by one draw of ``generator``
    (PyTorch's default: ``torch.manual_seed`` makes the masks reproducible), compared into ``out`` while
    in the cache. Each number is drawn a byte at a time: its high byte (eight a word) decides the
    comparison unless it equals the bound's, and only for those numbers (1 in 256) is a low byte drawn,
    which gives exactly the 16-bit comparison's probabilities from half the random words (a piece 486 ->
    426 us on one thread, ``benchmarks/results/session30/mask_bytes.py``). The pieces are filled side by side
    on up to ``torch.get_num_threads()`` threads, the calling thread one of them (NumPy releases the GIL for
    the drawing and the comparison), and do not depend on the thread count: a seed gives the same mask on one
    thread or many. The calling thread takes pieces instead of waiting for a pool of as many threads: the
    hippocampus step's masks on two threads 40.1 -> 35.0, 39.9 -> 36.7 and 41.9 -> 41.7 ms in three runs
    (``benchmarks/results/session32/mask_threads.py``). NumPy's steps run side by side (two threads on separate
    pieces take 1.05-1.20x one thread's time for twice the work: ``numpy_side_by_side.py`` there); what keeps the
    masks from scaling after an OpenMP op is its worker, which spins on the second core for a while: so a mask of
    fewer than :data:`HELPED_FROM_PIECES` pieces is filled by the calling thread alone.
    """
    n = out.numel()
    high, low = divmod(bound + 32768, 256)  # u + 32768 >= 256 high + low, for u + 32768 in [0, 65536)
    starts = range(0, n, NUMBERS_PER_PIECE)
    seeds = torch.empty(len(starts), dtype=torch.int64).random_(generator=generator).tolist()
    flags = out.numpy()

    def fill(i: int) -> None:
        a, b = starts[i], min(n, starts[i] + NUMBERS_PER_PIECE)
        draw = np.random.PCG64DXSM(seeds[i]).random_raw
        words = draw(-(-(b - a) // 8))
        np.greater(words.view(np.uint8)[: b - a], high, out=flags[a:b])
        ties = _ties(words, high, b - a)
        if ties.size:
            flags[a + ties] = draw(-(-ties.size // 8)).view(np.uint8)[: ties.size] >= low

    pieces = iter(range(len(starts)))  # taken one at a time by every worker (``next`` holds the GIL)

    def drain() -> None:
        for i in pieces:
            fill(i)

    helpers = min(torch.get_num_threads(), len(starts)) - 1 if len(starts) >= HELPED_FROM_PIECES else 0
    futures = [_pool(helpers).submit(drain) for _ in range(helpers)]
    try:
        drain()  # the calling thread takes pieces too, instead of waiting
    finally:
        wait(futures)  # no helper still writing into ``out`` when this returns or raises
    for future in futures:
        future.result()
    return out


def _ties(words: np.ndarray, byte: int, n: int) -> np.ndarray:
    """The positions (ascending) among the first ``n`` bytes of ``words`` (``uint64``) that equal ``byte``.

    (Searching word by word first, then in the words holding any, took 0.10 instead of 0.15 ms a piece, but the
    masks of a hippocampus step 27.4 against 28.3 ms on one thread and 18.9 against 18.4 on two:
    ``benchmarks/results/session33/ties.py``. Not used.)
    """
    return np.flatnonzero(words.view(np.uint8)[:n] == byte)


def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of ``workers`` helper threads for this process (a forked child makes its own)."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="factorseg-random")
    return _POOLS[key]


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def as_factor(keep: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean keep-mask as 0/1 factors of ``dtype`` (``None`` stays ``None``), to multiply by.

    On the CPU, converting the mask's bytes (its ``uint8`` view) and multiplying is 3-5x faster than
    ``where`` on the boolean mask or a product with it (both convert booleans element by element); the
    factors are a temporary the size of the mask, so callers convert cache-sized pieces.
    """
    return None if keep is None else keep.view(torch.uint8).to(dtype)


def masked(x: Tensor, keep: tuple[Tensor, float] | None) -> Tensor:
    """``where(keep, x, 0) * scale`` (dropout with a given :func:`keep_mask`), or ``x`` without one.

    Where ``x`` and the mask have the same dense layout (a mask from :func:`keep_mask_like`), the
    product runs over cache-sized pieces in memory order, each with its :func:`as_factor` factors: no
    map-sized temporary. Elsewhere ``where``.
    """
    if keep is None:
        return x
    mask, scale = keep
    flat_x, flat_mask = _memory_flat(x), _memory_flat(mask)
    if flat_x is None or flat_mask is None or x.stride() != mask.stride():
        return torch.where(mask, x, x.new_zeros(())).mul_(scale)
    out = pool.empty_like(x)  # the same strides as the dense x
    flat_out = _memory_flat(out)
    assert flat_out is not None
    n = block_rows(1, x.element_size())
    for xs, ms, os in zip(flat_x.split(n), flat_mask.split(n), flat_out.split(n)):
        torch.mul(xs, as_factor(ms, x.dtype).mul_(scale), out=os)
    return out


def _memory_order(t: Tensor) -> list[int]:
    """``t``'s dims from the outermost in memory to the innermost (a permutation to its memory order)."""
    return sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))


def _memory_flat(t: Tensor) -> Tensor | None:
    """A 1D view of a dense tensor in memory order, or ``None`` where ``t`` is not dense."""
    p = t.permute(_memory_order(t))
    return p.view(-1) if p.is_contiguous() else None


class _KeepScale(torch.autograd.Function):
    """:func:`masked` saving only the boolean mask (a quarter of a float mask)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return masked(x, (keep, scale))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return masked(grad, (keep, ctx.scale)), None, None
