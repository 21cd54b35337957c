"""Window matricize: feature maps ``(B, C, *spatial)`` <-> matrices ``(head_dim x window voxels)``.

Each head's channels and each window's voxels form one matrix for the NMF. Three variants:

* global: one window covering the whole (any-size) input;
* local: non-overlapping windows of a fixed size;
* shifted: the local partition repeated for several cyclic shifts (Swin-style); on the way back
  the per-shift results are averaged.

Inputs whose size is not a multiple of the window are zero-padded (zero columns do not change a
nonnegative factorization) and cropped back; a window larger than the input shrinks to the input,
and shifts that cannot change the partition are dropped, so one model runs on any input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


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

    def __call__(self, x: Tensor) -> tuple[Tensor, WindowLayout]:
        """Matrices ``(B, S, H, W, head_dim, window_voxels)`` and the layout to invert them."""
        b, c, *spatial = x.shape
        if len(spatial) != self.spatial_dims:
            raise ValueError(f"expected {self.spatial_dims} spatial dims, got input of shape {tuple(x.shape)}")
        if c % self.head_dim:
            raise ValueError(f"{c} channels are not divisible by head_dim {self.head_dim}")
        lay = self.layout(spatial)
        pad = [p for s, q in zip(reversed(lay.spatial), reversed(lay.padded)) for p in (0, q - s)]
        xp = F.pad(x, pad) if any(pad) else x
        dims = tuple(range(2, 2 + self.spatial_dims))
        views = []
        for shift in lay.shifts:
            xs = torch.roll(xp, tuple(-s for s in shift), dims) if any(shift) else xp
            views.append(self._partition(xs, lay))
        return torch.stack(views, dim=1), lay

    def _partition(self, x: Tensor, lay: WindowLayout) -> Tensor:
        b, c = x.shape[:2]
        heads, nd = c // self.head_dim, self.spatial_dims
        split = [v for g, w in zip(lay.grid, lay.window) for v in (g, w)]
        x = x.reshape(b, heads, self.head_dim, *split)
        grid_axes = [3 + 2 * i for i in range(nd)]
        win_axes = [4 + 2 * i for i in range(nd)]
        x = x.permute(0, 1, *grid_axes, 2, *win_axes)
        return x.reshape(b, heads, lay.num_windows, self.head_dim, math.prod(lay.window))

    def inverse(self, mats: Tensor, lay: WindowLayout) -> Tensor:
        """Feature map ``(B, C, *spatial)`` from matrices; shifted results are averaged."""
        b, s, heads = mats.shape[:3]
        nd = self.spatial_dims
        dims = tuple(range(2, 2 + nd))
        total = None
        for i, shift in enumerate(lay.shifts):
            x = mats[:, i].reshape(b, heads, *lay.grid, self.head_dim, *lay.window)
            # (b, heads, g1.., hd, w1..) -> (b, heads, hd, g1, w1, g2, w2, ...)
            order = [0, 1, 2 + nd] + [a for i_ in range(nd) for a in (2 + i_, 3 + nd + i_)]
            x = x.permute(*order).reshape(b, heads * self.head_dim, *lay.padded)
            if any(shift):
                x = torch.roll(x, shift, dims)
            total = x if total is None else total + x
        assert total is not None
        if s > 1:
            total = total / s
        crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in lay.spatial)
        return total[crop]
