"""Window matricize: feature maps ``(B, C, *spatial)`` <-> matrices ``(head_dim x window voxels)``.

Each head's channels and each window's voxels form one matrix for the NMF. Three variants:

* global: one window covering the whole (any-size) input;
* local: non-overlapping windows of a fixed size;
* shifted: the local partition repeated for several cyclic shifts (Swin-style); on the way back
  the per-shift results are averaged.

Inputs whose size is not a multiple of the window are zero-padded (zero columns do not change a
nonnegative factorization) and cropped back; a window larger than the input shrinks to the input,
and shifts that cannot change the partition are dropped, so one model runs on any input size.

Speed: a cyclic shift is never materialised with ``torch.roll``. The windows of a shifted partition
are read straight from the unshifted map: along each dimension a shift by ``s`` splits every window
into the last ``w - s`` voxels of one window and the first ``s`` of the next (the last window
wrapping to the first), so each shift is one copy made of at most ``3 ** dims`` strided block copies
(:func:`_shift_pieces`), written directly into the stacked output. The way back is the adjoint (the
same blocks, added). Both directions are wrapped so that autograd uses the adjoint copy as backward.

Besides the ``(B, S, H, W, head_dim, N)`` matrices of :class:`WindowMatricize`, the mixer uses a
*window-major, channels-last* form ``(B, S, W, N, C)`` (:func:`window_stack` / :func:`window_unstack`)
in which every window is a contiguous ``N x C`` block: the matrices are then a strided view of it
(:func:`matrices_view`), with no copy per head.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


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


# A block copy between two window-major views: index tuples over the axes (g_1..g_n, w_1..w_n),
# first for the shifted ("rolled") order, then for the unshifted one.
_Piece = tuple[tuple[slice, ...], tuple[slice, ...]]


def _shift_pieces(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> list[_Piece]:
    """Block copies taking the unshifted window-major order to the order of ``roll(x, -shift)``.

    Window ``g'`` of the rolled map holds unshifted voxels ``g' w + w' + s (mod g w)``: for
    ``w' < w - s`` that is window ``g'``, offset ``w' + s``; otherwise window ``g' + 1`` (the last one
    wrapping to window 0), offset ``w' - (w - s)``. Three blocks per shifted dimension.
    """
    full = slice(None)
    per_dim: list[list[tuple[tuple[slice, slice], tuple[slice, slice]]]] = []
    for g, w, s in zip(grid, window, shift):
        if s == 0:
            per_dim.append([((full, full), (full, full))])
            continue
        per_dim.append(
            [
                ((full, slice(0, w - s)), (full, slice(s, w))),
                ((slice(0, g - 1), slice(w - s, w)), (slice(1, g), slice(0, s))),
                ((slice(g - 1, g), slice(w - s, w)), (slice(0, 1), slice(0, s))),
            ]
        )
    pieces = []
    for combo in itertools.product(*per_dim):
        rolled = tuple(c[0][0] for c in combo) + tuple(c[0][1] for c in combo)
        plain = tuple(c[1][0] for c in combo) + tuple(c[1][1] for c in combo)
        if all(_nonempty(sl, n) for sl, n in zip(rolled, (*grid, *window))):
            pieces.append((rolled, plain))
    return pieces


def _nonempty(sl: slice, n: int) -> bool:
    return len(range(*sl.indices(n))) > 0


def _at(piece: tuple[slice, ...]) -> tuple[Any, ...]:
    """Index of a piece in a grid view ``(B, g_1..g_n, w_1..w_n, *rest)``."""
    return (slice(None), *piece, Ellipsis)


def _gather(dst: Tensor, src: Tensor, pieces: list[_Piece]) -> None:
    """``dst`` (rolled order) <- ``src`` (unshifted order); both grid views."""
    for rolled, plain in pieces:
        dst[_at(rolled)].copy_(src[_at(plain)])


def _scatter(dst: Tensor, src: Tensor, pieces: list[_Piece], accumulate: bool) -> None:
    """``dst`` (unshifted order) <- or += ``src`` (rolled order); both grid views."""
    for rolled, plain in pieces:
        if accumulate:
            dst[_at(plain)].add_(src[_at(rolled)])
        else:
            dst[_at(plain)].copy_(src[_at(rolled)])


def _grid_of_channels_first(x: Tensor, lay: WindowLayout, heads: int) -> Tensor:
    """``(B, C, *padded)`` -> view ``(B, g_1..g_n, w_1..w_n, heads, head_dim)``."""
    nd = len(lay.grid)
    split = [v for g, w in zip(lay.grid, lay.window) for v in (g, w)]
    v = x.view(x.shape[0], heads, x.shape[1] // heads, *split)
    return v.permute(0, *(3 + 2 * i for i in range(nd)), *(4 + 2 * i for i in range(nd)), 1, 2)


def _grid_of_matrices(m: Tensor, lay: WindowLayout) -> Tensor:
    """One shift's matrices ``(B, H, W, head_dim, N)`` -> view ``(B, g.., w.., H, head_dim)``."""
    nd = len(lay.grid)
    v = m.view(m.shape[0], m.shape[1], *lay.grid, m.shape[3], *lay.window)
    return v.permute(0, *range(2, 2 + nd), *range(3 + nd, 3 + 2 * nd), 1, 2 + nd)


def _grid_of_channels_last(x: Tensor, lay: WindowLayout) -> Tensor:
    """``(B, *padded, C)`` -> view ``(B, g_1..g_n, w_1..w_n, C)``."""
    nd = len(lay.grid)
    split = [v for g, w in zip(lay.grid, lay.window) for v in (g, w)]
    v = x.view(x.shape[0], *split, x.shape[-1])
    return v.permute(0, *(1 + 2 * i for i in range(nd)), *(2 + 2 * i for i in range(nd)), 1 + 2 * nd)


def _grid_of_windows(x: Tensor, lay: WindowLayout) -> Tensor:
    """Window-major ``(B, W, N, C)`` -> view ``(B, g_1..g_n, w_1..w_n, C)``."""
    return x.view(x.shape[0], *lay.grid, *lay.window, x.shape[-1])


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


def _pad_channels_first(x: Tensor, lay: WindowLayout) -> Tensor:
    pad = [p for s, q in zip(reversed(lay.spatial), reversed(lay.padded)) for p in (0, q - s)]
    return F.pad(x, pad) if any(pad) else x


def _crop(x: Tensor, lay: WindowLayout, first_spatial_axis: int) -> Tensor:
    if not lay.is_padded:
        return x
    index = (slice(None),) * first_spatial_axis + tuple(slice(0, n) for n in lay.spatial)
    return x[index]


class WindowMatricize:
    """Cut ``(B, C, *spatial)`` into matrices ``(B, S, H, W, head_dim, window_voxels)``.

    ``S`` is the number of shifts, ``H = C // head_dim`` the number of heads and ``W`` the number of
    windows. ``window_size=None`` gives the global variant. ``shifts`` lists cyclic shifts (an int
    for every dimension or one tuple per shift); ``(0,)`` is the local variant.
    """

    def __init__(
        self,
        spatial_dims: int,
        head_dim: int,
        window_size: int | Sequence[int] | None = None,
        shifts: Sequence[int | Sequence[int]] = (0,),
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
            # A shift along a dimension with a single window only permutes columns: drop it.
            eff = tuple(0 if g == 1 else s % w for s, w, g in zip(shift, window, grid))
            if eff not in shifts:
                shifts.append(eff)
        return WindowLayout(spatial, window, grid, tuple(shifts))

    def _check(self, x: Tensor) -> None:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(f"expected {self.spatial_dims} spatial dims, got input of shape {tuple(x.shape)}")
        if x.shape[1] % self.head_dim:
            raise ValueError(f"{x.shape[1]} channels are not divisible by the head_dim {self.head_dim}")

    def __call__(self, x: Tensor) -> tuple[Tensor, WindowLayout]:
        """Matrices ``(B, S, H, W, head_dim, window_voxels)`` (contiguous) and the layout to invert them."""
        self._check(x)
        lay = self.layout(x.shape[2:])
        heads = x.shape[1] // self.head_dim
        mats = _relayout(
            x,
            lambda t: self._cut(t, lay, heads),
            lambda g: self._assemble(g, lay, heads, scale=1.0),
        )
        return mats, lay

    def inverse(self, mats: Tensor, lay: WindowLayout) -> Tensor:
        """Feature map ``(B, C, *spatial)`` from matrices; shifted results are averaged."""
        heads, s = mats.shape[2], mats.shape[1]
        if s != len(lay.shifts) or mats.shape[3] != lay.num_windows or mats.shape[5] != lay.window_voxels:
            raise ValueError(f"matrices of shape {tuple(mats.shape)} do not match the window layout {lay}")
        return _relayout(
            mats,
            lambda t: self._assemble(t, lay, heads, scale=1.0 / s),
            lambda g: self._cut(g, lay, heads, scale=1.0 / s),
        )

    def _cut(self, x: Tensor, lay: WindowLayout, heads: int, scale: float = 1.0) -> Tensor:
        xp = _pad_channels_first(x, lay)
        src = _grid_of_channels_first(xp, lay, heads)
        mats = x.new_empty(x.shape[0], len(lay.shifts), heads, lay.num_windows, self.head_dim, lay.window_voxels)
        for i, shift in enumerate(lay.shifts):
            _gather(_grid_of_matrices(mats[:, i], lay), src, _shift_pieces(lay.grid, lay.window, shift))
        return mats.mul_(scale) if scale != 1.0 else mats

    def _assemble(self, mats: Tensor, lay: WindowLayout, heads: int, scale: float) -> Tensor:
        b = mats.shape[0]
        out = mats.new_empty(b, heads * self.head_dim, *lay.padded)
        dst = _grid_of_channels_first(out, lay, heads)
        for i, shift in enumerate(lay.shifts):
            pieces = _shift_pieces(lay.grid, lay.window, shift)
            _scatter(dst, _grid_of_matrices(mats[:, i], lay), pieces, accumulate=i > 0)
        if scale != 1.0:
            out.mul_(scale)
        return _crop(out, lay, 2)


def window_stack(x: Tensor, lay: WindowLayout) -> Tensor:
    """Channels-last ``(B, *padded, C)`` -> window-major ``(B, S, W, N, C)``, one slot per shift.

    Slot ``i`` holds the windows of the partition shifted by ``lay.shifts[i]``; each window is a
    contiguous ``N x C`` block. The input must already be zero-padded to ``lay.padded``.
    """
    if tuple(x.shape[1:-1]) != lay.padded:
        raise ValueError(f"window_stack needs a map padded to {lay.padded}, got shape {tuple(x.shape)}")
    return _relayout(x, lambda t: _stack(t, lay), lambda g: _unstack(g, lay))


def window_unstack(y: Tensor, lay: WindowLayout) -> Tensor:
    """Adjoint of :func:`window_stack`: ``(B, S, W, N, C)`` -> ``(B, *padded, C)``, summing the shifts."""
    if y.shape[1] != len(lay.shifts) or y.shape[2] != lay.num_windows or y.shape[3] != lay.window_voxels:
        raise ValueError(f"window-major tensor of shape {tuple(y.shape)} does not match the layout {lay}")
    return _relayout(y, lambda t: _unstack(t, lay), lambda g: _stack(g, lay))


def _stack(x: Tensor, lay: WindowLayout) -> Tensor:
    b, c = x.shape[0], x.shape[-1]
    src = _grid_of_channels_last(x, lay)
    out = x.new_empty(b, len(lay.shifts), lay.num_windows, lay.window_voxels, c)
    for i, shift in enumerate(lay.shifts):
        _gather(_grid_of_windows(out[:, i], lay), src, _shift_pieces(lay.grid, lay.window, shift))
    return out


def _unstack(y: Tensor, lay: WindowLayout) -> Tensor:
    b, c = y.shape[0], y.shape[-1]
    out = y.new_empty(b, *lay.padded, c)
    dst = _grid_of_channels_last(out, lay)
    for i, shift in enumerate(lay.shifts):
        _scatter(dst, _grid_of_windows(y[:, i], lay), _shift_pieces(lay.grid, lay.window, shift), accumulate=i > 0)
    return out


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
