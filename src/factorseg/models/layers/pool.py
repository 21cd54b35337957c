"""Map-sized CPU buffers kept for reuse, where glibc's default allocator would page-fault them anew every step.

glibc serves every block of 32 MiB or more with a fresh ``mmap`` and unmaps it when it is freed, so each
training step page-faults (and the kernel zeroes) all of its large activations and gradients again: 8.6 GiB
a 128^3 BraTS-preset step, 17 GiB at 160^3, where the step took twice as long as with the command's allocator
settings (docs/performance.md). Those settings change the whole process, which library code must not do
behind its caller; so the layers' own large buffers (the MLP's and the mixer's box-by-box outputs and
gradients, dropout masks, the heads' and the skip products' input gradients) come from this pool instead, which
keeps them when they are freed and hands them out again. A model's own output (its heads') does not: its caller
may keep it, and a kept buffer would raise what the pool holds once it is freed.

A buffer is leased as a tensor on a NumPy array over it (``torch.from_numpy``; not a view, so that autograd can
still sum a gradient into it in place): the tensor's storage holds the array, so the array dies exactly when
the last tensor, view or autograd record of the storage does, and a ``weakref.finalize`` then returns the
buffer to the pool. A lease takes the smallest free buffer of at least
the size asked for and less than twice it; otherwise a new buffer, after dropping the longest-free buffers as
far as needed to keep what the pool holds (leased and free) within :data:`SLACK` times the most it ever had
leased at once. So the pool holds little more than its callers' own peak, and a repeated step reuses the same
buffers (a 160^3 BraTS-preset step: 6,375 MiB held for a peak of 6,250 leased, no new buffer after the first
step; without the slack 1.5 GiB of new buffers a step).

It serves only where :func:`factorseg.allocator.pool_wanted` says glibc would not keep the memory itself:
with the ``factorseg`` command's settings, :func:`factorseg.allocator.tune`, a user's ``glibc.malloc``
tunables or ``FACTORSEG_ALLOCATOR=default``, every call is ``torch.empty``. :func:`release` gives the free
buffers back to the system (as ``torch.cuda.empty_cache`` does for PyTorch's GPU cache).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from factorseg import allocator

LARGE = 32 << 20
"""Bytes from which a buffer comes from the pool: glibc's largest mmap threshold (it maps every block from there)."""


SLACK = 1.25
"""The pool holds at most this times the most its callers ever had leased at once (the buffers a step needs at its
different moments differ in size)."""


class BufferPool:
    """Free buffers (``uint8`` arrays, the longest-free first) and the bytes leased and held."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # a finalizer may run inside ``lease`` (a garbage collection there)
        self._free: list[np.ndarray] = []
        self.leased = 0
        self.held = 0
        self.peak_leased = 0

    def lease(
        self, nbytes: int, shape: Sequence[int] | None = None, dtype: np.dtype | None = None,
        strides: Sequence[int] | None = None,
    ) -> np.ndarray:
        """An array of ``nbytes`` (``uint8``, or of ``shape``, ``dtype`` and byte ``strides``) on a pooled buffer, back
        in the pool when the array dies (a tensor made on it by ``torch.from_numpy`` holds it)."""
        dropped: list[np.ndarray] = []  # freed after the lock: no finalizer runs under it
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if nbytes <= b.nbytes < 2 * nbytes]
            if fits:
                buffer = self._free.pop(min(fits, key=lambda i: self._free[i].nbytes))
            else:
                bound = max(int(self.peak_leased * SLACK), self.leased + nbytes)
                while self._free and self.held + nbytes > bound:
                    dropped.append(self._free.pop(0))
                    self.held -= dropped[-1].nbytes
                buffer = torch.empty(nbytes, dtype=torch.uint8).numpy()
                self.held += nbytes
            self.leased += buffer.nbytes
            self.peak_leased = max(self.peak_leased, self.leased)
        dropped.clear()
        array = np.ndarray((nbytes,) if shape is None else tuple(shape), dtype or np.uint8, buffer, strides=strides)
        weakref.finalize(array, self._give_back, buffer).atexit = False  # on the array itself: NumPy may not keep
        return array  # intermediate arrays as bases

    def _give_back(self, buffer: np.ndarray) -> None:
        with self._lock:
            self._free.append(buffer)
            self.leased -= buffer.nbytes

    def release(self) -> int:
        """Drop the free buffers (the leased ones stay); returns the bytes dropped."""
        with self._lock:
            dropped, self._free = self._free, []
            freed = sum(b.nbytes for b in dropped)
            self.held -= freed
        dropped.clear()
        return freed


def pool() -> BufferPool:
    """This process's pool (a forked child makes its own: its parent's lock and leases are not its own)."""
    pid = os.getpid()
    if pid not in _POOLS:
        _POOLS.clear()
        _POOLS[pid] = BufferPool()
    return _POOLS[pid]


_POOLS: dict[int, BufferPool] = {}


def release() -> int:
    """Give the pool's free buffers back to the system; returns the bytes given back."""
    return pool().release()


def empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
    """``torch.empty(shape, dtype=dtype, device=device)``, from the pool where it serves (CPU, :data:`LARGE` bytes or more)."""
    if not _serves(math.prod(shape) * dtype.itemsize, device):
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    return _leased(shape, torch.empty(tuple(shape), device="meta").stride(), dtype)


def empty_like(t: Tensor, contiguous: bool = False) -> Tensor:
    """``torch.empty_like(t)`` (contiguous if asked, else ``t``'s layout as PyTorch keeps it), pooled as :func:`empty`."""
    layout = torch.contiguous_format if contiguous else torch.preserve_format
    if not _serves(t.numel() * t.element_size(), t.device):
        return torch.empty_like(t, memory_format=layout)
    return _leased(t.shape, torch.empty_like(t, device="meta", memory_format=layout).stride(), t.dtype)


def empty_strided(shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """``torch.empty_strided`` over a dense layout, pooled as :func:`empty`."""
    if not _serves(math.prod(shape) * dtype.itemsize, device):
        return torch.empty_strided(tuple(shape), tuple(strides), dtype=dtype, device=device)
    return _leased(shape, strides, dtype)


def _serves(nbytes: int, device: torch.device | str) -> bool:
    return torch.device(device).type == "cpu" and nbytes >= LARGE and allocator.pool_wanted()


def _leased(shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype) -> Tensor:
    """A CPU tensor of ``shape`` and (dense) ``strides`` on a leased buffer."""
    nbytes = math.prod(shape) * dtype.itemsize
    if dtype not in _NUMPY:  # (bfloat16: a view of the bytes)
        return torch.from_numpy(pool().lease(nbytes)).view(dtype).as_strided(tuple(shape), tuple(strides))
    # Not a view: autograd sums a gradient into a tensor in place only when nothing else shares its storage.
    return torch.from_numpy(pool().lease(nbytes, shape, _NUMPY[dtype], [s * dtype.itemsize for s in strides]))


_NUMPY = {
    t: np.dtype(n) for t, n in (
        (torch.float32, "float32"), (torch.float64, "float64"), (torch.float16, "float16"), (torch.int64, "int64"),
        (torch.int32, "int32"), (torch.int16, "int16"), (torch.int8, "int8"), (torch.uint8, "uint8"), (torch.bool, "bool"),
    )
}
