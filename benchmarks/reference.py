"""Plain reference formulation of the NMF mixer and the Factorizer block: the numerical oracle.

Written the straightforward way and independently of ``factorseg.models.layers``: the in-projection
as a channels-first convolution, zero padding, ``torch.roll`` and a reshape per shift, every NMF
iteration unrolled with explicit ``X v`` / ``X^T u`` products (HALS per column, Lee-Seung MU), the
reconstruction ``U V^T`` materialised, rolled back, averaged and cropped, then the out-projection.
Only the module's parameters and settings are read. ``tests/test_mixer_reference.py`` checks the
optimised mixer and block against it; the benchmarks time it as the "before" of the optimisations
(``benchmarks/mixer.py``, and whole networks through :func:`benchmarks.common.reference_model`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def eps_of(dtype: torch.dtype) -> float:
    """The denominator guard the NMF uses for this compute dtype."""
    return 1e-12 if dtype == torch.float64 else 1e-8


def effective_layout(
    spatial: Sequence[int], window_size: Sequence[int] | None, shifts: Sequence[Sequence[int]],
    positional: bool = False,
) -> tuple[tuple[int, ...], tuple[int, ...], list[tuple[int, ...]]]:
    """Window, grid and distinct effective shifts: windows shrink to the input, no-op shifts drop.

    With ``positional`` (voxel order matters: the fixed_uv init) a shift of a single-window
    dimension still rolls the voxels inside the window, so it is kept.
    """
    window = tuple(spatial) if window_size is None else tuple(min(w, s) for w, s in zip(window_size, spatial))
    grid = tuple(math.ceil(s / w) for s, w in zip(spatial, window))
    used: list[tuple[int, ...]] = []
    for shift in shifts:
        eff = tuple(0 if g == 1 and not positional else s % w for s, w, g in zip(shift, window, grid))
        if eff not in used:
            used.append(eff)
    return window, grid, used


def to_windows(x: Tensor, head_dim: int, window: Sequence[int], shift: Sequence[int]) -> Tensor:
    """Padded ``(B, C, *padded)`` -> ``(B, H, W, head_dim, N)`` after rolling by ``-shift``."""
    nd = len(window)
    dims = tuple(range(2, 2 + nd))
    if any(shift):
        x = torch.roll(x, tuple(-s for s in shift), dims)
    b, c = x.shape[:2]
    grid = [p // w for p, w in zip(x.shape[2:], window)]
    split = [v for g, w in zip(grid, window) for v in (g, w)]
    x = x.reshape(b, c // head_dim, head_dim, *split)
    x = x.permute(0, 1, *[3 + 2 * i for i in range(nd)], 2, *[4 + 2 * i for i in range(nd)])
    return x.reshape(b, c // head_dim, math.prod(grid), head_dim, math.prod(window))


def from_windows(m: Tensor, padded: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> Tensor:
    """Inverse of :func:`to_windows`: ``(B, H, W, head_dim, N)`` -> ``(B, C, *padded)``."""
    nd = len(window)
    b, heads, _, hd, _ = m.shape
    grid = [p // w for p, w in zip(padded, window)]
    x = m.reshape(b, heads, *grid, hd, *window)
    order = [0, 1, 2 + nd] + [a for i in range(nd) for a in (2 + i, 3 + nd + i)]
    x = x.permute(*order).reshape(b, heads * hd, *padded)
    if any(shift):
        x = torch.roll(x, tuple(shift), tuple(range(2, 2 + nd)))
    return x


def _hals_u(x: Tensor, u: Tensor, v: Tensor, eps: float) -> Tensor:
    """HALS update of ``u`` in ``x ~ u v^T``: rank 1 in closed form, else column by column."""
    xv = x @ v
    vtv = v.transpose(-1, -2) @ v
    if u.shape[-1] == 1:
        return torch.relu(xv) / (vtv + eps)
    cols = list(u.unbind(-1))
    for r in range(len(cols)):
        current = torch.stack(cols, dim=-1)
        step = (xv[..., r] - (current @ vtv[..., :, r : r + 1]).squeeze(-1)) / (vtv[..., r, r].unsqueeze(-1) + eps)
        cols[r] = torch.relu(cols[r] + step)
    return torch.stack(cols, dim=-1)


def _mu_u(x: Tensor, u: Tensor, v: Tensor, eps: float) -> Tensor:
    """Lee-Seung multiplicative update of ``u`` in ``x ~ u v^T``."""
    return u * (x @ v) / (u @ (v.transpose(-1, -2) @ v) + eps)


def reference_nmf(
    x: Tensor, u0: Tensor, num_iters: int, solver: str, backprop_iters: int | None, eps: float,
    v0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Factors of ``x (..., M, N)`` from ``u0 (..., M, R)``, then unrolled iterations (U first, then V).

    Without ``v0``: the least-squares ``v0`` of ``u0`` starts. With ``backprop_iters = k`` the
    initialisation and all but the last ``k`` iterations run without gradient (the initialisation
    keeps its gradient when nothing else would carry one). With ``v0 (..., N, R)`` (the fixed_uv
    init) both factors start as the given constants.
    """
    update = {"hals": _hals_u, "mu": _mu_u}[solver]
    tracked = num_iters if backprop_iters is None else min(backprop_iters, num_iters)
    untracked = num_iters - tracked
    xt = x.transpose(-1, -2)
    with torch.set_grad_enabled(torch.is_grad_enabled() and (untracked == 0 or tracked == 0) and v0 is None):
        u = u0
        v = (xt @ u) / ((u * u).sum(dim=-2, keepdim=True) + eps) if v0 is None else v0
    for i in range(num_iters):
        with torch.set_grad_enabled(torch.is_grad_enabled() and i >= untracked):
            u = update(x, u, v, eps)
            v = update(xt, v, u, eps)
    return u, v


def reference_mixer(mixer: nn.Module, x: Tensor) -> Tensor:
    """The output of a ``factorseg.models.layers.mixer.NMFMixer`` (fixed_uv, fixed_u or random init), the plain way.

    For ``init="random"`` it draws ``torch.rand(B, S, H, W, head_dim, R)`` like the layer does, so
    seed the generator identically before both calls. For ``fixed_uv`` a window smaller than the
    configured one takes the ``v0`` entries of its own positions (the corner sub-box).
    """
    nmf, mat = mixer.nmf, mixer.matricize
    if nmf.init not in ("fixed_uv", "fixed_u", "random"):
        raise ValueError("the reference covers the fixed_uv, fixed_u and random initialisations")
    nd = x.dim() - 2
    conv = _CONV[nd]
    h = torch.relu(conv(x, mixer.in_proj.weight, mixer.in_proj.bias))
    spatial = tuple(x.shape[2:])
    window, grid, shifts = effective_layout(spatial, mat.window_size, mat.shifts, positional=nmf.init == "fixed_uv")
    padded = tuple(g * w for g, w in zip(grid, window))
    pad = [p for s, q in zip(reversed(spatial), reversed(padded)) for p in (0, q - s)]
    hp = F.pad(h, pad)
    mats = torch.stack([to_windows(hp, mat.head_dim, window, s) for s in shifts], dim=1)
    dtype = torch.float32 if mats.dtype in (torch.float16, torch.bfloat16) else mats.dtype
    xm = mats.to(dtype)
    v0 = None
    if nmf.init == "random":
        u0 = torch.rand(*xm.shape[:-2], nmf.rows, nmf.rank, dtype=dtype, device=x.device)
    else:
        u0 = nmf.u0.to(dtype).expand(*xm.shape[:-2], nmf.rows, nmf.rank)
    if nmf.init == "fixed_uv":
        full = nmf.v0.to(dtype).reshape(*mat.window_size, nmf.rank)
        box = full[tuple(slice(0, w) for w in window)].reshape(-1, nmf.rank)
        v0 = box.expand(*xm.shape[:-2], *box.shape)
    eps = eps_of(dtype) if nmf.eps is None else nmf.eps
    u, v = reference_nmf(xm, u0, nmf.num_iters, nmf.solver, nmf.backprop_iters, eps, v0)
    rec = (u @ v.transpose(-1, -2)).to(mats.dtype)
    total = sum(from_windows(rec[:, i], padded, window, s) for i, s in enumerate(shifts)) / len(shifts)
    crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)
    return conv(total[crop], mixer.out_proj.weight, mixer.out_proj.bias)


def _channel_layer_norm(norm: nn.Module, x: Tensor) -> Tensor:
    ln = norm.norm
    return F.layer_norm(x.movedim(1, -1), ln.normalized_shape, ln.weight, ln.bias, ln.eps).movedim(-1, 1)


def reference_block(block: nn.Module, x: Tensor) -> Tensor:
    """A ``factorseg.models.blocks.FactorizerBlock`` without dropout: ``x + mixer(LN x)``, ``+ mlp(LN x)``."""
    conv = _CONV[x.dim() - 2]
    x = x + reference_mixer(block.mixer, _channel_layer_norm(block.norm1, x))
    first, act, _, second, _ = block.mlp.net
    h = conv(_channel_layer_norm(block.norm2, x), first.weight, first.bias)
    h = F.gelu(h, approximate=act.approximate)
    return x + conv(h, second.weight, second.bias)
