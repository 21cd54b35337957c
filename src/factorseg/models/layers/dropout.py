"""CPU dropout from 64-bit random words, and the keep-masks it draws (shared with the MLP's memory diet)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from factorseg.models.layers.fastpath import block_rows, traced


class Dropout(nn.Dropout):
    """``nn.Dropout`` with CPU masks from 64-bit random words (forward + backward 2x faster on the CPU).

    On the CPU, PyTorch draws dropout masks at about 100 million per second (one generator call and
    a float comparison per element), which made dropout the largest single cost of a Factorizer
    training step at full resolution (three masks per block, over 250 million numbers at 128^3).
    Here one 64-bit random word (:func:`random_words`, seeded from PyTorch's default generator, so
    ``torch.manual_seed`` makes it reproducible, and drawn on all of PyTorch's threads) gives four uniform
    16-bit numbers (masks 5x faster to draw than ``bernoulli_`` on one thread), an
    element is kept when its number is at least ``round(p 2^16)`` (in 16-bit two's complement), and
    kept values are scaled by the inverse of the exact keep probability (``p`` is rounded to a
    multiple of ``2^-16``). Other devices, in-place use and graph capture use ``F.dropout``. Same
    state dict as ``nn.Dropout``. Forward + backward timing: ``benchmarks/dropout.py``.
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

    CPU: from 64-bit random words (see :class:`Dropout`; ``p`` rounded to a multiple of ``2^-16``), drawn
    by :func:`random_words`; other devices: ``bernoulli_``. ``generator`` (on ``device``) makes the mask
    reproducible; the same seed gives the same mask at any thread count.
    """
    n = math.prod(shape)
    if device.type == "cpu":
        threshold = round(p * 65536)
        words = random_words(-(-n // 4), generator)
        return at_least(words.view(torch.int16)[:n], threshold - 32768).view(*shape), 65536 / (65536 - threshold)
    keep = torch.empty(*shape, device=device).bernoulli_(1.0 - p, generator=generator).bool()
    return keep, 1.0 / (1.0 - p)


WORDS_PER_PIECE = 2**18
"""Random words (2 MiB) per independently seeded piece of :func:`random_words`."""


def random_words(n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` uniform 64-bit random words (``int64``), drawn on several threads where PyTorch has them.

    PyTorch's CPU generator fills a tensor on one thread, however many threads the rest of a training
    step runs on (the masks of a 128^3 BraTS step are about 200 M words). Here
    the words come in pieces of :data:`WORDS_PER_PIECE`, each from its own generator seeded by one draw
    of ``generator`` (PyTorch's default: ``torch.manual_seed`` makes them reproducible), so the pieces can
    be filled side by side: on up to ``torch.get_num_threads()`` threads (the fill releases the GIL),
    with the same words whatever the thread count. A 67 M-element mask on two threads: 79 -> 55 ms
    (``benchmarks/results/session28/mask_threads.py``).
    """
    words = torch.empty(n, dtype=torch.int64)
    pieces = words.split(WORDS_PER_PIECE)
    seeds = torch.empty(len(pieces), dtype=torch.int64).random_(generator=generator).tolist()

    def fill(i: int) -> None:
        pieces[i].random_(-(2**63), None, generator=torch.Generator().manual_seed(seeds[i]))

    workers = min(torch.get_num_threads(), len(pieces))
    if workers <= 1:
        for i in range(len(pieces)):
            fill(i)
    else:
        list(_pool(workers).map(fill, range(len(pieces))))
    return words


def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of ``workers`` threads for this process (a forked child makes its own)."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="factorseg-random")
    return _POOLS[key]


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def at_least(values: Tensor, bound: int) -> Tensor:
    """``values >= bound`` for a 1D integer CPU tensor, as ``bool``, in cache-sized pieces.

    PyTorch compares element by element where the result is ``bool``, but vectorised where it is the
    inputs' own type: each piece is compared into a buffer of that type and narrowed into the result's
    bytes (0/1), 2x faster for the 16-bit numbers of :func:`keep_mask` (one thread: 22.5 -> 11.9 ms for
    28.7 M; ``benchmarks/results/session25/mask_compare.py``).
    """
    keep = torch.empty(values.shape, dtype=torch.bool)
    n = block_rows(1, values.element_size())
    buffer = values.new_empty(min(n, values.numel()))
    for piece, out in zip(values.split(n), keep.view(torch.uint8).split(n)):
        out.copy_(torch.ge(piece, bound, out=buffer[: piece.numel()]))
    return keep


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
    out = torch.empty_like(x)  # the same strides as the dense x
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
