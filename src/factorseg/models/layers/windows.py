"""Window matricize: feature maps ``(B, C, *spatial)`` <-> matrices ``(head_dim x window voxels)``.

Each head's channels and each window's voxels form one matrix for the NMF. Three variants:

* global: one window covering the whole (any-size) input;
* local: non-overlapping windows of a fixed size;
* shifted: the local partition repeated for several cyclic shifts (Swin-style); on the way back
  the per-shift results are averaged.

Inputs whose size is not a multiple of the window are zero-padded (zero columns do not change a
nonnegative factorization) and cropped back; a window larger than the input shrinks to the input,
and shifts that cannot change the partition are dropped, so one model runs on any input size.

Speed: a cyclic shift is never materialised with ``torch.roll``. The work happens channels-last,
where every voxel is a contiguous row of ``C`` values: the windows of all shifts are gathered from
the unshifted map by one ``index_select`` with cached voxel indices (:func:`_window_numbers`, the
plain roll-and-partition applied once to a map of voxel numbers), into a *window-major* buffer
``(B, S, W, N, C)`` (:func:`window_stack`) in which every window is a contiguous ``N x C`` block.
The ``(B, S, H, W, head_dim, N)`` matrices are a strided view of that buffer
(:func:`matrices_view`), with no copy per head or shift. The way back (:func:`window_unstack`) is
the adjoint gather, summing the shifts; each direction is the other's backward.

Sub-blocks. Where only per-window sums of per-voxel quantities are needed (the Gram matrices of
rank-1 HALS, and a per-window linear map applied back to every voxel), the shifted windows need
not be materialised at all. Every window of every shift is a union of *sub-blocks*, boxes whose
edge is the gcd of the window and the shifts along each axis (4^3 for 8^3 windows shifted by 4).
:func:`to_subblocks` lays the map out sub-block-major once (one copy, the size of the map, for all
shifts together), :func:`window_sums` adds per-sub-block values into per-window values of every
shift (the window partition of the small sub-block grid), and :func:`subblock_sums` is its adjoint
(:func:`subblock_windows` the same without the sum over the shifts).

Index tables are cached process-wide as CPU tensors; their copies on other devices are kept by the
module that uses them (:class:`IndexTables`, one per :class:`WindowMatricize`), so that device memory
goes with that module.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from factorseg.models.layers.fastpath import traced


def _as_tuple(value: int | Sequence[int], dims: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    out = tuple(int(v) for v in value)
    if len(out) != dims:
        raise ValueError(f"{what} {value!r} must have {dims} entries")
    return out


@dataclass(frozen=True)
class WindowLayout:
    """How a feature map was cut, so that ``WindowMatricize.inverse`` can undo it."""

    spatial: tuple[int, ...]  # original spatial size
    window: tuple[int, ...]  # effective window per dimension
    grid: tuple[int, ...]  # windows per dimension
    shifts: tuple[tuple[int, ...], ...]  # effective cyclic shifts actually used

    @property
    def padded(self) -> tuple[int, ...]:
        return tuple(w * g for w, g in zip(self.window, self.grid))

    @property
    def num_windows(self) -> int:
        return math.prod(self.grid)

    @property
    def window_voxels(self) -> int:
        """N, the number of voxels (matrix columns) per window."""
        return math.prod(self.window)

    @property
    def is_padded(self) -> bool:
        return self.padded != self.spatial


class _Relayout(torch.autograd.Function):
    """A linear copy whose backward is its adjoint; both are plain functions run without autograd."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, apply: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.adjoint = adjoint
        return apply(x)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return ctx.adjoint(grad), None, None


def _relayout(x: Tensor, apply: Callable[[Tensor], Tensor], adjoint: Callable[[Tensor], Tensor]) -> Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        return _Relayout.apply(x, apply, adjoint)
    return apply(x)


def _crop(x: Tensor, lay: WindowLayout, first_spatial_axis: int) -> Tensor:
    if not lay.is_padded:
        return x
    index = (slice(None),) * first_spatial_axis + tuple(slice(0, n) for n in lay.spatial)
    return x[index]


class WindowMatricize:
    """Cut ``(B, C, *spatial)`` into matrices ``(B, S, H, W, head_dim, window_voxels)``.

    ``S`` is the number of shifts, ``H = C // head_dim`` the number of heads and ``W`` the number of
    windows. ``window_size=None`` gives the global variant. ``shifts`` lists cyclic shifts (an int
    for every dimension or one tuple per shift); ``(0,)`` is the local variant. ``positional=True``
    says the factorization depends on the order of a window's voxels (the ``fixed_uv`` NMF init
    weights them by position): then a shift along a dimension with a single window is kept (it
    rolls the voxels within the window) instead of being dropped as a mere column permutation.
    """

    def __init__(
        self,
        spatial_dims: int,
        head_dim: int,
        window_size: int | Sequence[int] | None = None,
        shifts: Sequence[int | Sequence[int]] = (0,),
        positional: bool = False,
    ) -> None:
        if spatial_dims not in (1, 2, 3):
            raise ValueError("spatial_dims must be 1, 2 or 3")
        if head_dim < 1:
            raise ValueError("head_dim must be >= 1")
        self.spatial_dims, self.head_dim = spatial_dims, head_dim
        self.window_size = None if window_size is None else _as_tuple(window_size, spatial_dims, "window_size")
        if self.window_size is not None and min(self.window_size) < 1:
            raise ValueError("window_size must be >= 1")
        self.shifts = tuple(_as_tuple(s, spatial_dims, "shift") for s in shifts) or ((0,) * spatial_dims,)
        self.positional = positional
        #: Device copies of the index tables of this matricize's layouts.
        self.tables = IndexTables()

    def layout(self, spatial: Sequence[int]) -> WindowLayout:
        """Effective windows, grid and shifts for an input of this spatial size."""
        spatial = tuple(int(s) for s in spatial)
        if self.window_size is None:
            window = spatial
        else:
            window = tuple(min(w, s) for w, s in zip(self.window_size, spatial))
        grid = tuple(-(-s // w) for s, w in zip(spatial, window))
        shifts: list[tuple[int, ...]] = []
        for shift in self.shifts:
            # A shift along a dimension with a single window only permutes columns: drop it, unless
            # the columns' order matters.
            eff = tuple(0 if g == 1 and not self.positional else s % w for s, w, g in zip(shift, window, grid))
            if eff not in shifts:
                shifts.append(eff)
        return WindowLayout(spatial, window, grid, tuple(shifts))

    def layout_of(self, x: Tensor) -> WindowLayout:
        """The layout for a feature map ``x (B, C, *spatial)``, after checking its rank and channels."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(f"expected {self.spatial_dims} spatial dims, got input of shape {tuple(x.shape)}")
        if x.shape[1] % self.head_dim:
            raise ValueError(f"{x.shape[1]} channels are not divisible by the head_dim {self.head_dim}")
        return self.layout(x.shape[2:])

    def __call__(self, x: Tensor) -> tuple[Tensor, WindowLayout]:
        """Matrices ``(B, S, H, W, head_dim, window_voxels)`` (contiguous) and the layout to invert them."""
        lay = self.layout_of(x)
        stacked = window_stack(pad_channels_last(x.movedim(1, -1), lay), lay, self.tables)
        return matrices_view(stacked, self.head_dim).contiguous(), lay

    def inverse(self, mats: Tensor, lay: WindowLayout) -> Tensor:
        """Feature map ``(B, C, *spatial)`` from matrices; shifted results are averaged.

        The result is channels-last in memory (a ``(B, *spatial, C)`` buffer seen as ``(B, C, *spatial)``).
        """
        b, s, heads, w, hd, n = mats.shape
        if s != len(lay.shifts) or w != lay.num_windows or n != lay.window_voxels:
            raise ValueError(f"matrices of shape {tuple(mats.shape)} do not match the window layout {lay}")
        stacked = mats.permute(0, 1, 3, 5, 2, 4).reshape(b, s, w, n, heads * hd)
        if s > 1:
            stacked = stacked / s  # average as a sum of parts: no overflow near the dtype's maximum
        return crop_channels_last(window_unstack(stacked, lay, self.tables), lay).movedim(-1, 1)


class IndexTables:
    """Copies of the index tables on devices other than the CPU, kept by the module that uses them.

    The tables themselves are CPU tensors cached process-wide (integer arrays built with NumPy);
    on the CPU they are used as they are. Every function of this module that gathers takes
    ``tables``; without one, other devices get a fresh copy per call. At most ``capacity`` copies
    are kept (the least recently used go), a few input sizes' worth.
    """

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._copies: OrderedDict[tuple[Hashable, ...], Tensor] = OrderedDict()

    def get(self, table: Callable[..., np.ndarray], *args: Hashable, device: torch.device) -> Tensor:
        """The int64 or int32 tensor ``table(*args)`` on ``device``."""
        if torch.compiler.is_compiling():  # constants of the captured graph, built outside any cache
            return torch.from_numpy(table(*args)).to(device)
        cpu = _cpu_table(table, *args)
        if device.type == "cpu":
            return cpu
        key = (table, *args, device)
        copy = self._copies.get(key)
        if copy is None:
            with torch.inference_mode(False):  # see _cpu_table
                copy = self._copies[key] = cpu.to(device)
            if len(self._copies) > self.capacity:
                self._copies.popitem(last=False)
        else:
            self._copies.move_to_end(key)
        return copy


@functools.lru_cache(maxsize=128)
def _cpu_table(table: Callable[..., np.ndarray], *args: Hashable) -> Tensor:
    """``table(*args)`` as a CPU tensor, cached process-wide.

    A normal tensor even when first needed under inference mode (validation): autograd saves it later.
    """
    with torch.inference_mode(False):
        return torch.from_numpy(table(*args))


def _index(tables: IndexTables | None, table: Callable[..., np.ndarray], *args: Hashable,
           device: torch.device) -> Tensor:
    return (tables if tables is not None else IndexTables()).get(table, *args, device=device)


def _dim0_kernels(*tensors: Tensor) -> bool:
    """Whether a gather / scatter-add along an inner dim may run as one along dim 0 of a row view
    (:func:`_fold`): contiguous CPU tensors, no graph capture."""
    return not traced() and all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)


def _fold(index: Tensor, lead: int, n: int) -> Tensor:
    """``index`` (rows of one ``n``-row slice) repeated for ``lead`` consecutive slices of ``n`` rows."""
    dtype = torch.int64 if lead * n > torch.iinfo(torch.int32).max else index.dtype
    rows = index.to(dtype)
    return rows if lead == 1 else (torch.arange(0, lead * n, n, dtype=dtype).unsqueeze(1) + rows).view(-1)


def _select(t: Tensor, dim: int, index: Tensor) -> Tensor:
    """``t.index_select(dim, index)``; on the CPU as one gather of whole rows along dim 0 (:func:`_fold`).

    PyTorch's CPU ``index_select`` along an inner dim copies slice by slice: 1.4-1.8x slower than one
    dim-0 gather of the same rows on one thread, 2x on two (the hippocampus recipe's window sums;
    ``benchmarks/results/session26/gather_forms.py``).
    """
    if dim == 0 or not _dim0_kernels(t):
        return t.index_select(dim, index)
    lead, n, trail = math.prod(t.shape[:dim]), t.shape[dim], math.prod(t.shape[dim + 1 :])
    rows = t.view(lead * n, trail).index_select(0, _fold(index, lead, n))
    return rows.view(*t.shape[:dim], index.numel(), *t.shape[dim + 1 :])


def _add_rows(out: Tensor, dim: int, index: Tensor, source: Tensor) -> Tensor:
    """``out.index_add_(dim, index, source)``; on the CPU along dim 0 of row views (:func:`_fold`)."""
    if dim == 0 or not _dim0_kernels(out, source):
        return out.index_add_(dim, index, source)
    lead, n, trail = math.prod(out.shape[:dim]), out.shape[dim], math.prod(out.shape[dim + 1 :])
    out.view(lead * n, trail).index_add_(0, _fold(index, lead, n), source.view(-1, trail))
    return out


def window_stack(x: Tensor, lay: WindowLayout, tables: IndexTables | None = None) -> Tensor:
    """Channels-last ``(B, *padded, C)`` -> window-major ``(B, S, W, N, C)``, one slot per shift.

    Slot ``i`` holds the windows of the partition shifted by ``lay.shifts[i]``; each window is a
    contiguous ``N x C`` block. The input must already be zero-padded to ``lay.padded``. ``tables``
    keeps the device copies of the indices (:class:`IndexTables`).
    """
    if tuple(x.shape[1:-1]) != lay.padded:
        raise ValueError(f"window_stack needs a map padded to {lay.padded}, got shape {tuple(x.shape)}")
    return _relayout(x, lambda t: _stack(t, lay, tables), lambda g: _unstack(g, lay, tables))


def window_unstack(y: Tensor, lay: WindowLayout, tables: IndexTables | None = None) -> Tensor:
    """Adjoint of :func:`window_stack`: ``(B, S, W, N, C)`` -> ``(B, *padded, C)``, summing the shifts."""
    if y.shape[1] != len(lay.shifts) or y.shape[2] != lay.num_windows or y.shape[3] != lay.window_voxels:
        raise ValueError(f"window-major tensor of shape {tuple(y.shape)} does not match the layout {lay}")
    return _relayout(y, lambda t: _unstack(t, lay, tables), lambda g: _stack(g, lay, tables))


@functools.lru_cache(maxsize=32)
def _window_numbers(lay: WindowLayout) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the window-major stack and of its inverse, for a channels-last map.

    ``stack[s * V + j] = x[index[s * V + j]]`` over the ``V`` voxels of the padded map, and
    ``x = sum_s stack[s * V + inverse[s, i]]``. Built by rolling and partitioning the voxel numbers
    themselves, i.e. the plain formulation applied once to an index map. NumPy, so that tracing
    (``torch.compile``, ONNX export) sees constants; int32 keeps them small.
    """
    nd, volume = len(lay.grid), math.prod(lay.padded)
    numbers = np.arange(volume, dtype=np.int64).reshape(lay.padded)
    split = [v for g, w in zip(lay.grid, lay.window) for v in (g, w)]
    order = [*(2 * i for i in range(nd)), *(2 * i + 1 for i in range(nd))]
    index, inverse = [], []
    for shift in lay.shifts:
        rolled = np.roll(numbers, tuple(-v for v in shift), tuple(range(nd))) if any(shift) else numbers
        idx = rolled.reshape(split).transpose(order).reshape(-1)
        inv = np.empty_like(idx)
        inv[idx] = np.arange(volume, dtype=np.int64)
        index.append(idx)
        inverse.append(inv)
    return np.concatenate(index).astype(np.int32), np.stack(inverse).astype(np.int32)


def _stack_rows(lay: WindowLayout) -> np.ndarray:
    """The rows of the padded map that :func:`window_stack` gathers, in window-major order."""
    return _window_numbers(lay)[0]


def _unstack_rows(lay: WindowLayout) -> np.ndarray:
    """``(S, V)``: the row of the window-major stack of each shift holding each voxel of the padded map."""
    return _window_numbers(lay)[1]


def _stack(x: Tensor, lay: WindowLayout, tables: IndexTables | None) -> Tensor:
    b, c = x.shape[0], x.shape[-1]
    index = _index(tables, _stack_rows, lay, device=x.device)
    out = _select(x.reshape(b, -1, c), 1, index)
    return out.view(b, len(lay.shifts), lay.num_windows, lay.window_voxels, c)


def _unstack(y: Tensor, lay: WindowLayout, tables: IndexTables | None) -> Tensor:
    b, s, c = y.shape[0], y.shape[1], y.shape[-1]
    inverse = _index(tables, _unstack_rows, lay, device=y.device)
    rows = y.reshape(b, s, -1, c)
    out = rows[:, 0].index_select(1, inverse[0])
    if s > 1:
        part = torch.empty_like(out)
        for i in range(1, s):
            out.add_(torch.index_select(rows[:, i], 1, inverse[i], out=part))
    return out.view(b, *lay.padded, c)


def subblock_edges(lay: WindowLayout) -> tuple[int, ...]:
    """Edge lengths of the sub-blocks that tile the windows of every shift of ``lay``."""
    return tuple(math.gcd(w, *(shift[i] for shift in lay.shifts)) for i, w in enumerate(lay.window))


def _subblock_split(lay: WindowLayout, edges: Sequence[int]) -> tuple[list[int], list[int]]:
    """``view`` sizes ``(g0, e0, g1, e1, ...)`` of a padded map and the permutation to grid-major order."""
    nd = len(edges)
    split = [v for p, e in zip(lay.padded, edges) for v in (p // e, e)]
    return split, [*(1 + 2 * i for i in range(nd)), *(2 + 2 * i for i in range(nd))]


def to_subblocks(x: Tensor, lay: WindowLayout, edges: Sequence[int]) -> Tensor:
    """Channels-last ``(B, *padded, C)`` -> sub-block-major ``(B, K, Q, C)`` (``K`` sub-blocks of ``Q`` voxels)."""
    b, c = x.shape[0], x.shape[-1]
    split, order = _subblock_split(lay, edges)
    k, q = math.prod(split[0::2]), math.prod(edges)

    def apply(t: Tensor) -> Tensor:
        return t.view(b, *split, c).permute(0, *order, len(split) + 1).reshape(b, k, q, c)

    def adjoint(t: Tensor) -> Tensor:
        return from_subblocks(t, lay, edges)

    if tuple(x.shape[1:-1]) != lay.padded:
        raise ValueError(f"to_subblocks needs a map padded to {lay.padded}, got shape {tuple(x.shape)}")
    return _relayout(x, apply, adjoint)


def from_subblocks(y: Tensor, lay: WindowLayout, edges: Sequence[int]) -> Tensor:
    """Inverse (and adjoint) of :func:`to_subblocks`: ``(B, K, Q, C)`` -> ``(B, *padded, C)``."""
    b, c = y.shape[0], y.shape[-1]
    split, order = _subblock_split(lay, edges)
    nd = len(edges)
    inverse = [0] * len(order)
    for position, axis in enumerate(order):
        inverse[axis - 1] = position + 1

    def apply(t: Tensor) -> Tensor:
        grid_major = t.view(b, *split[0::2], *split[1::2], c)
        return grid_major.permute(0, *inverse, 2 * nd + 1).reshape(b, *lay.padded, c)

    return _relayout(y, apply, lambda t: to_subblocks(t, lay, edges))


@dataclass(frozen=True)
class SubblockBox:
    """A run of whole sub-blocks, consecutive in sub-block-major order, that tiles a box of the map.

    ``k``: their range of ``K``; ``spatial``: the box's slices of the padded map; ``counts``: the box's
    size in sub-blocks along each axis.
    """

    k: slice
    spatial: tuple[slice, ...]
    counts: tuple[int, ...]


@functools.lru_cache(maxsize=64)
def subblock_boxes(lay: WindowLayout, edges: tuple[int, ...], voxels: int) -> tuple[SubblockBox, ...]:
    """The sub-block-major order of ``lay`` cut into :class:`SubblockBox` es of about ``voxels`` voxels (at least one sub-block).

    For kernels that go from the map to its sub-blocks (or back) one cache-sized box at a time: a box
    fixes the grid index of the first axes, takes a range of the next one and all of the others, so its
    sub-blocks are one contiguous run of ``K`` and its voxels one box of the map (:func:`subblock_view`).
    """
    grid = [p // e for p, e in zip(lay.padded, edges)]
    q, nd = math.prod(edges), len(edges)
    d = 0  # the axis the boxes take ranges of: the first whose units (one index, all of the later axes) fit
    while d < nd - 1 and math.prod(grid[d + 1 :]) * q > voxels:
        d += 1
    unit = math.prod(grid[d + 1 :])
    step = max(1, voxels // (unit * q))
    boxes = []
    for prefix in itertools.product(*(range(g) for g in grid[:d])):
        first = 0
        for i, g in zip(prefix, grid[:d]):
            first = first * g + i
        for start in range(0, grid[d], step):
            stop = min(start + step, grid[d])
            k0 = (first * grid[d] + start) * unit
            boxes.append(SubblockBox(
                slice(k0, k0 + (stop - start) * unit),
                (
                    *(slice(i * e, (i + 1) * e) for i, e in zip(prefix, edges)),
                    slice(start * edges[d], stop * edges[d]),
                    *(slice(None) for _ in grid[d + 1 :]),
                ),
                (*(1 for _ in prefix), stop - start, *grid[d + 1 :]),
            ))
    return tuple(boxes)


def subblock_view(t: Tensor, box: SubblockBox, edges: Sequence[int]) -> Tensor:
    """A box's voxels, as ``x[box.spatial]`` (any strides) or its map-order rows ``(V, C)``, sub-block-major: a
    ``(*box.counts, *edges, C)`` view (its :meth:`~torch.Tensor.reshape` to ``(n, Q, C)`` is those sub-blocks of
    :func:`to_subblocks`)."""
    nd = len(edges)
    split = [v for g, e in zip(box.counts, edges) for v in (g, e)]
    return t.view(*split, t.shape[-1]).permute(*range(0, 2 * nd, 2), *range(1, 2 * nd, 2), 2 * nd)


def map_order(blocks: Tensor, box: SubblockBox, edges: Sequence[int]) -> Tensor:
    """The inverse of :func:`subblock_view`: a box's sub-blocks ``(n, Q, C)`` as map-order rows ``(V, C)`` (a copy)."""
    nd, c = len(edges), blocks.shape[-1]
    order = [a for d in range(nd) for a in (d, nd + d)]
    return blocks.reshape(*box.counts, *edges, c).permute(*order, 2 * nd).reshape(-1, c)


def _subblock_layout(lay: WindowLayout, edges: Sequence[int]) -> WindowLayout:
    """``lay`` on the grid of sub-blocks: windows of ``window / edge`` sub-blocks, shifts in sub-blocks."""
    sub_grid = tuple(p // e for p, e in zip(lay.padded, edges))
    return WindowLayout(
        sub_grid,
        tuple(w // e for w, e in zip(lay.window, edges)),
        lay.grid,
        tuple(tuple(v // e for v, e in zip(shift, edges)) for shift in lay.shifts),
    )


def window_sums(
    t: Tensor, lay: WindowLayout, edges: Sequence[int], dim: int = 1, tables: IndexTables | None = None
) -> Tensor:
    """Per-sub-block values (``K`` along ``dim``) summed per window of each shift: ``K`` -> ``S, W``.

    On the CPU each shift adds every sub-block into its window (``index_add_``, the rows of
    :func:`_subblock_rows`): no gathered copy, 1.4-2.2x faster than gathering and summing
    (``benchmarks/results/session26/gather_forms.py``, ``window_sums_brats128.py``). Elsewhere (and under graph capture) the
    sub-blocks of every window of every shift are gathered by one ``index_select`` (the window
    partition of the sub-block grid, :func:`_window_numbers`), then summed in contiguous groups
    (deterministic on a GPU). The window order is that of :func:`window_stack`. The gradient is the
    adjoint, :func:`subblock_sums` (one gather per shift), rather than autograd's: that would write the
    gathered size out again and scatter it back into zeros (1.4x slower forward + backward).
    """
    sub = _subblock_layout(lay, edges)
    s, w = len(lay.shifts), lay.num_windows

    def apply(u: Tensor) -> Tensor:
        if _dim0_kernels(u):
            rows = _index(tables, _subblock_rows, lay, tuple(edges), device=u.device)  # (S, K) -> S W
            out = u.new_zeros(*u.shape[:dim], s * w, *u.shape[dim + 1 :])
            for shift_rows in rows:
                _add_rows(out, dim, shift_rows, u)
            return out.view(*u.shape[:dim], s, w, *u.shape[dim + 1 :])
        gathered = u.index_select(dim, _index(tables, _stack_rows, sub, device=u.device))
        return gathered.view(*u.shape[:dim], s, w, sub.window_voxels, *u.shape[dim + 1 :]).sum(dim + 2)

    return _relayout(t, apply, lambda g: subblock_sums(g, lay, edges, tables, dim))


def subblock_sums(
    t: Tensor, lay: WindowLayout, edges: Sequence[int], tables: IndexTables | None = None, dim: int = 1
) -> Tensor:
    """Adjoint of :func:`window_sums`: per-window values ``(S, W)`` at dims ``dim, dim + 1`` -> ``K`` at ``dim``.

    Every sub-block gets the sum, over the shifts, of the value of the window that contains it.
    """
    s, w = t.shape[dim], t.shape[dim + 1]
    rows = _index(tables, _subblock_rows, lay, tuple(edges), device=t.device)
    flat = t.reshape(*t.shape[:dim], s * w, *t.shape[dim + 2 :])
    out = _select(flat, dim, rows[0])
    for i in range(1, s):
        out = out.add_(_select(flat, dim, rows[i]))
    return out


def subblock_windows(
    t: Tensor, lay: WindowLayout, edges: Sequence[int], tables: IndexTables | None = None
) -> Tensor:
    """Per-window values ``(B, S, W, *rest)`` -> ``(B, K, S, *rest)``: each sub-block's window of every shift.

    One ``index_select`` (:func:`subblock_sums` is this summed over ``S``).
    """
    b, s, w = t.shape[:3]
    rows = _index(tables, _subblock_window_rows, lay, tuple(edges), device=t.device)
    gathered = _select(t.reshape(b, s * w, *t.shape[3:]), 1, rows)
    return gathered.view(b, -1, s, *t.shape[3:])


def _subblock_window_rows(lay: WindowLayout, edges: tuple[int, ...]) -> np.ndarray:
    """:func:`_subblock_rows` sub-block-major: ``(K S,)``, the shifts of each sub-block together."""
    return np.ascontiguousarray(_subblock_rows(lay, edges).T).reshape(-1)


def _subblock_rows(lay: WindowLayout, edges: tuple[int, ...]) -> np.ndarray:
    """``(S, K)``: the row of the ``S W`` per-window values holding each shift's window of each sub-block."""
    sub = _subblock_layout(lay, edges)
    _, inverse = _window_numbers(sub)
    return inverse.astype(np.int64) // sub.window_voxels + np.arange(len(lay.shifts)).reshape(-1, 1) * lay.num_windows


def shift_window_sums(
    t: Tensor, lay: WindowLayout, edges: Sequence[int], tables: IndexTables | None = None
) -> Tensor:
    """Per-shift per-sub-block values ``(B, S, K, *rest)`` summed per window of their shift: ``(B, S, W, *rest)``.

    Like :func:`window_sums`, but shift ``s``'s windows add up slot ``s`` of ``t`` (values that
    depend on the shift, such as a position-in-window weighting).
    """
    b, s = t.shape[0], t.shape[1]
    flat = t.reshape(b, s * t.shape[2], *t.shape[3:])
    if _dim0_kernels(flat):  # as in window_sums: each sub-block added into its window of its shift
        rows = _index(tables, _subblock_rows, lay, tuple(edges), device=t.device).reshape(-1)  # S K -> S W
        out = _add_rows(flat.new_zeros(b, s * lay.num_windows, *t.shape[3:]), 1, rows, flat)
        return out.view(b, s, lay.num_windows, *t.shape[3:])
    gathered = flat.index_select(1, _index(tables, _shift_window_rows, lay, tuple(edges), device=t.device))
    sub_voxels = math.prod(w // e for w, e in zip(lay.window, edges))
    return gathered.view(b, s, lay.num_windows, sub_voxels, *t.shape[3:]).sum(3)


def _shift_window_rows(lay: WindowLayout, edges: tuple[int, ...]) -> np.ndarray:
    """Rows of ``(S K)`` per-shift sub-block values in the window-major order of every shift."""
    sub = _subblock_layout(lay, edges)
    index, _ = _window_numbers(sub)
    k = math.prod(sub.spatial)
    offsets = np.repeat(np.arange(len(lay.shifts), dtype=np.int64) * k, k)
    return index.astype(np.int64) + offsets


def subblock_weights(
    weights: Tensor, lay: WindowLayout, edges: Sequence[int], tables: IndexTables | None = None
) -> Tensor:
    """A per-position-in-window weighting ``(N,)`` (row-major window voxels) per shift and sub-block.

    Returns ``(S, K, Q)``: the weights of the voxels of sub-block ``k`` at the positions they take in
    their window of shift ``s`` (the slot that the sub-block fills there).
    """
    nd = len(edges)
    slots = [w // e for w, e in zip(lay.window, edges)]
    split = [v for p, e in zip(slots, edges) for v in (p, e)]
    per_slot = weights.reshape(split).permute(*range(0, 2 * nd, 2), *range(1, 2 * nd, 2)).reshape(
        math.prod(slots), math.prod(edges)
    )  # (P, Q)
    index = _index(tables, _subblock_slots, lay, tuple(edges), device=weights.device)  # (S, K)
    return per_slot.index_select(0, index.reshape(-1)).view(*index.shape, -1)


def _subblock_slots(lay: WindowLayout, edges: tuple[int, ...]) -> np.ndarray:
    """``(S, K)``: the slot (row-major position among its window's sub-blocks) of each sub-block per shift."""
    sub = _subblock_layout(lay, edges)
    _, inverse = _window_numbers(sub)
    return inverse.astype(np.int64) % sub.window_voxels


def matrices_view(stacked: Tensor, head_dim: int) -> Tensor:
    """The ``(B, S, H, W, head_dim, N)`` matrices of a window-major ``(B, S, W, N, C)`` tensor, as a view."""
    b, s, w, n, c = stacked.shape
    if c % head_dim:
        raise ValueError(f"{c} channels are not divisible by the head_dim {head_dim}")
    return stacked.view(b, s, w, n, c // head_dim, head_dim).permute(0, 1, 4, 2, 5, 3)


def pad_channels_last(x: Tensor, lay: WindowLayout) -> Tensor:
    """Zero-pad a channels-last ``(B, *spatial, C)`` map at the end of each spatial axis to ``lay.padded``."""
    pad = [0, 0] + [p for s, q in zip(reversed(lay.spatial), reversed(lay.padded)) for p in (0, q - s)]
    return F.pad(x, pad) if lay.is_padded else x


def crop_channels_last(x: Tensor, lay: WindowLayout) -> Tensor:
    """Crop a padded channels-last ``(B, *padded, C)`` map back to ``lay.spatial`` (a view)."""
    return _crop(x, lay, 1)
