"""Differentiable nonnegative matrix factorization (NMF) for batches of small matrices.

The Factorizer replaces attention with a low-rank nonnegative approximation ``X ~ U V^T`` of each
window matrix ``X (M x N)`` (head channels x window voxels). ``NMF`` runs a fixed number of
multiplicative-update (MU) or HALS iterations and returns the reconstruction, which is differentiable
either through every iteration or only through the last ``k`` (the one-step gradient of Geng et al.,
ICLR 2021, for ``k = 1``), trading gradient fidelity for memory.

An iteration updates ``U`` given ``V``, then ``V`` given ``U``. Initialisations:

* ``"fixed_uv"`` (the paper's, the authors' "uniform"): fixed buffers ``u0 (M, R)`` and ``v0 (N, R)``
  drawn once; the first iteration updates ``U`` from ``v0``, so ``v0`` (a fixed weighting of each
  window's voxels) is what matters. The initialisation is not differentiated; zero iterations give
  the constant ``u0 v0^T``.
* ``"fixed_u"`` (``"fixed"`` in older configs): a fixed buffer ``U0`` and ``V0 = argmin_V ||X - U0 V^T||``
  column-wise (exact for rank 1), so zero iterations already yield a meaningful rank-R approximation.
* ``"random"`` (a fresh uniform ``U0`` per call, then ``V0`` as above) and ``"nndsvd"``.

Fused rank-1 HALS (the presets' solver). For ``X >= 0`` and ``U0 >= 0`` every ``X^T u`` is already
nonnegative, so ``v = X^T u / (u.u + eps)`` exactly, and one iteration only needs the Gram matrix
``G = X X^T`` (``M x M``): ``X v = a G u`` and ``v.v = a^2 u^T G u`` with ``a = 1 / (u.u + eps)``.
The iterations then never touch ``X``: one pass builds ``G``, one more gives the final ``v``,
instead of two passes per iteration, and autograd keeps only ``M x M`` intermediates (full unrolling
costs almost no more memory than the one-step gradient). The last-k gradient is kept exact: the
first tracked step sees the previous ``v`` as a constant (``X X_detached^T``, see :class:`_Gram`).
The value equals the plain iterations up to float rounding; in the gradient, a zero entry of
``X^T u`` counts as interior (one-sided derivative in the nonnegative orthant) instead of ReLU's
zero subgradient there, which only changes gradients at entries that a preceding ReLU already
zeroes (as in the mixer). Matrices that are strided views of a channels-last window buffer
(``windows.matrices_view``) get all heads' Gram blocks from one ``(N x C)^T (N x C)`` product.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from factorseg.models.layers import pool
from factorseg.models.layers.fastpath import traced

Solver = Literal["hals", "mu"]
Init = Literal["fixed_uv", "fixed_u", "random", "nndsvd"]
INITS: tuple[str, ...] = ("fixed_uv", "fixed_u", "random", "nndsvd")
#: Names written by earlier factorseg versions.
_INIT_ALIASES = {"fixed": "fixed_u"}

_EPS = {
    torch.float64: 1e-12,
    torch.float32: 1e-8,
    # 1e-16 underflows to 0 in half precision; these stay representable and far below typical values.
    torch.bfloat16: 1e-6,
    torch.float16: 1e-6,
}


# Matrices whose largest entry exceeds this are factorised after dividing by that entry.
_RESCALE_ABOVE = 1e6


def eps_for(dtype: torch.dtype) -> float:
    """Denominator guard for ``dtype``: small against typical values, yet representable."""
    return _EPS.get(dtype, 1e-8)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are factorised in float32: the matrices are tiny, the ratios are not."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _is_nonnegative(x: Tensor) -> bool:
    return x.numel() == 0 or bool(x.min() >= 0)


def _gram_columns(a: Tensor) -> Tensor:
    """Squared norms of the columns of ``a (..., K, R)`` -> ``(..., 1, R)``."""
    return (a * a).sum(dim=-2, keepdim=True)


def _solve_factor(x: Tensor, other: Tensor, eps: float) -> Tensor:
    """Column-wise exact least squares for one factor given the other (rank-1 closed form)."""
    return (x @ other) / (_gram_columns(other) + eps)


def _hals_update(x: Tensor, factor: Tensor, other: Tensor, eps: float) -> Tensor:
    """One HALS sweep for ``factor`` in ``x ~ factor @ other^T`` (``x`` already oriented).

    Rank 1 is the closed-form projected least squares ``relu(x v) / (v . v)``; higher ranks do
    the exact coordinate step per column, each column seeing the already-updated ones.
    """
    xo = x @ other  # (..., K, R)
    if factor.shape[-1] == 1:
        return torch.relu(xo) / (_gram_columns(other) + eps)
    gram = other.transpose(-1, -2) @ other  # (..., R, R)
    cols = list(factor.unbind(-1))
    for r in range(len(cols)):
        current = torch.stack(cols, dim=-1)
        residual = xo[..., r] - (current @ gram[..., :, r : r + 1]).squeeze(-1)
        step = residual / (gram[..., r, r].unsqueeze(-1) + eps)
        cols[r] = torch.relu(cols[r] + step)
    return torch.stack(cols, dim=-1)


def _mu_update(x: Tensor, factor: Tensor, other: Tensor, eps: float) -> Tensor:
    """One Lee-Seung multiplicative update for ``factor`` in ``x ~ factor @ other^T``."""
    numerator = x @ other
    if factor.shape[-1] == 1:
        denominator = factor * _gram_columns(other)
    else:
        denominator = factor @ (other.transpose(-1, -2) @ other)
    return factor * numerator / (denominator + eps)


_UPDATES = {"hals": _hals_update, "mu": _mu_update}


@dataclass(frozen=True)
class NMFConfig:
    """The settings of an NMF layer (see :class:`NMF`), validated once; the network passes one down to its mixers.

    ``init=None`` is the paper's choice for the matricize (:meth:`init_for`). ``"fixed"`` (older
    configs) reads as ``"fixed_u"``.
    """

    rank: int = 1
    num_iters: int = 5
    solver: Solver = "hals"
    init: Init | None = None
    backprop_iters: int | None = None
    seed: int = 0
    eps: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "init", _INIT_ALIASES.get(self.init, self.init))  # type: ignore[arg-type]
        if self.solver not in _UPDATES:
            raise ValueError(f"unknown NMF solver {self.solver!r}; choose one of {sorted(_UPDATES)}")
        if self.init is not None and self.init not in INITS:
            raise ValueError(f"unknown NMF init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.rank < 1 or self.num_iters < 0:
            raise ValueError("NMF needs rank >= 1 and num_iters >= 0")
        if self.backprop_iters is not None and self.backprop_iters < 1:
            raise ValueError("backprop_iters must be >= 1 or None (full unrolling)")
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"NMF eps must be a positive number, got {self.eps!r}")

    def init_for(self, windowed: bool) -> Init:
        """The initialisation: the configured one, else the paper's ``fixed_uv`` for windows of a fixed size
        and ``fixed_u`` for a global window (it has no fixed size for a ``v0``)."""
        if self.init is not None:
            return self.init
        return "fixed_uv" if windowed else "fixed_u"


def _channels_last_view(x: Tensor) -> Tensor | None:
    """``(Bf, N, C)`` view of matrices ``x (..., H, W, M, N)`` cut from a channels-last window buffer.

    That is the layout of :func:`factorseg.models.layers.windows.matrices_view`: for each leading index and
    window, the ``N x (H * M)`` block is contiguous. Returns ``None`` for any other layout.
    """
    if x.dim() < 4:
        return None
    lead = list(range(x.dim() - 4))
    y = x.permute(*lead, -3, -1, -4, -2)  # (..., W, N, H, M)
    if not y.is_contiguous():
        return None
    return y.reshape(-1, x.shape[-1], x.shape[-4] * x.shape[-2])


def _from_channels_last(t: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`_channels_last_view` for a tensor ``(Bf, N, H * K)`` -> ``(..., H, W, K, N)``."""
    *lead, h, w, _, n = like.shape
    k = t.shape[-1] // h
    return t.view(*lead, w, n, h, k).permute(*range(len(lead)), -2, -4, -1, -3)


HEADS_PER_GRAM_PRODUCT = 4
"""Up to this many heads over fewer than :data:`GRAM_PAIR_ROWS` rows, one product gives every head's Gram matrix
(the ``C x C`` Gram of a matrix of rows, whose diagonal ``M x M`` blocks are the heads'); with more than twice as
many, the heads' columns are copied apart and multiplied head by head (at 16 heads 0.35-0.37x the one product's
time: ``benchmarks/results/session29/head_grams.py``); otherwise products of 2 heads."""

GRAM_PAIR_ROWS = 64
"""From this many rows per matrix (and for 5-8 heads at any number), products of 2 heads over strided views of
their columns (no copy): the blocks between heads that one product pays for cost more there than the extra calls.
Heads of 8, one / two threads, three runs (``benchmarks/results/session32/head_grams.py``): 512 sub-blocks of
64 x 32 (4 heads) take 0.70-0.72 / 0.73-0.75x the one product's time, 256 of 64 x 64 (8 heads) 0.60-0.61 /
0.70-0.71x the head-by-head product's, 2,048 of 8 x 64 0.56-0.60 / 0.64-0.71x; over 8 rows of 4 heads the one
product stays the faster (pairs 1.07-1.39x its time), over 16 they are level (0.86-1.10x)."""


def head_grams(rows: Tensor, head_dim: int) -> Tensor:
    """The heads' Gram matrices ``X_h^T X_h`` of matrices ``rows (Bf, N, C)`` whose ``C`` columns are heads of
    ``head_dim`` (``M``) channels, as ``(H, Bf, M, M)``: one product, products of 2 heads, or head by head
    (:data:`HEADS_PER_GRAM_PRODUCT`, :data:`GRAM_PAIR_ROWS`; off the CPU, where pairs were not measured, one
    product up to :data:`HEADS_PER_GRAM_PRODUCT` heads and head by head above)."""
    bf, n, c = rows.shape
    heads = c // head_dim
    cpu = rows.device.type == "cpu"  # (the pairs were measured there; elsewhere the forms before them)
    if heads > (2 * HEADS_PER_GRAM_PRODUCT if cpu else HEADS_PER_GRAM_PRODUCT):
        per_head = rows.view(bf, n, heads, head_dim).permute(2, 0, 3, 1).reshape(heads * bf, head_dim, n)
        return torch.bmm(per_head, per_head.transpose(1, 2)).view(heads, bf, head_dim, head_dim)
    pairs = cpu and heads > 2 and (heads > HEADS_PER_GRAM_PRODUCT or n >= GRAM_PAIR_ROWS)
    if not pairs:
        return _grams_of_group(rows, head_dim, heads)
    out = rows.new_empty(heads, bf, head_dim, head_dim)
    for first in range(0, heads, 2):
        g = min(2, heads - first)
        cols = rows[:, :, first * head_dim:(first + g) * head_dim]
        out[first:first + g] = _grams_of_group(cols, head_dim, g)
    return out


def _grams_of_group(cols: Tensor, head_dim: int, heads: int) -> Tensor:
    """The Gram matrices of the ``heads`` heads of ``cols (Bf, N, heads M)``, ``(heads, Bf, M, M)``: the diagonal
    blocks of one product (a view)."""
    full = torch.bmm(cols.transpose(1, 2), cols).view(cols.shape[0], heads, head_dim, heads, head_dim)
    return full.diagonal(dim1=1, dim2=3).permute(3, 0, 1, 2)


def heads_to_blocks(g: Tensor) -> Tensor:
    """Per-head ``(..., H, W, M, M)`` matrices -> block-diagonal ``(Bf, C, C)``: the heads' blocks of a ``C x C`` Gram."""
    h, m = g.shape[-4], g.shape[-2]
    per = g.transpose(-3, -4).reshape(-1, h, m, m)  # (Bf, H, M, M)
    full = per.new_zeros(per.shape[0], h, m, h, m)
    full.diagonal(dim1=1, dim2=3).copy_(per.permute(0, 2, 3, 1))
    return full.view(-1, h * m, h * m)


def _gram(x: Tensor) -> Tensor:
    """``X X^T`` of every matrix ``x (..., M, N)`` (:func:`head_grams` of a channels-last view)."""
    y = _channels_last_view(x)
    if y is None:
        return x @ x.transpose(-1, -2)
    *lead, h, w, m, _ = x.shape
    return head_grams(y, m).view(h, *lead, w, m, m).movedim(0, -4).contiguous()


def gram_pair(x: Tensor, left: bool = True) -> tuple[Tensor, Tensor]:
    """``(G, G_left)`` of matrices ``x (..., M, N)`` for :meth:`NMF.solve_gram_form` (see :class:`_Gram`).

    ``left=False`` (no truncated gradient reads ``G_left``): ``G`` twice, the same tensor.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        if left:
            return _Gram.apply(x, True)
        g = _Gram.apply(x, False)
        return g, g
    g = _gram(x)
    return g, g


def grams_in_range(g: Tensor) -> bool:
    """Whether the matrices of Gram matrices ``g (..., M, M)`` can be factorised as they are.

    True when every Gram diagonal (a row's squared norm, at least the square of its largest entry) is
    at most ``_RESCALE_ABOVE ** 2``: then no entry exceeds ``_RESCALE_ABOVE`` and :meth:`NMF.decompose`
    would not rescale, and no pass over the matrices themselves is needed to know it.
    """
    # max(), not amax(): on the strided diagonal amax() takes a slow reduction (1.5 against 0.06 ms, two threads,
    # 4 x 2 x 2 x 1400 Grams of 8 x 8; benchmarks/results/session31/diagonal_max.py), the same value.
    return g.numel() == 0 or bool(g.detach().diagonal(dim1=-2, dim2=-1).max() <= _RESCALE_ABOVE**2)


class _Gram(torch.autograd.Function):
    """``G = X X^T`` of every matrix ``X (..., M, N)``; with ``left``, returned twice: ``G`` and ``G_left``.

    Both have the same value; ``G_left`` differentiates as ``X X_detached^T`` (``X v`` for a constant
    ``v = X^T w``), which the first tracked step of a last-k gradient needs. One product serves both
    forward and backward (``dX = (dG + dG^T + dG_left) X``).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, left: bool) -> Tensor | tuple[Tensor, Tensor]:
        ctx.save_for_backward(x)
        g = _gram(x)
        return (g, g.clone()) if left else g

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dg: Tensor | None, dgl: Tensor | None = None) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        d = None if dg is None else dg + dg.transpose(-1, -2)
        if dgl is not None:
            d = dgl if d is None else d + dgl
        assert d is not None
        y = _channels_last_view(x)
        if y is None:
            return d @ x, None
        # Per head, dY_h = Y_h D_h^T with Y_h = X_h^T.
        return _from_channels_last(torch.bmm(y, heads_to_blocks(d.transpose(-1, -2))), x), None


def head_loadings_t(u: Tensor) -> Tensor:
    """Factors ``u (..., H, W, M, R)`` as block-diagonal ``(Bf, H R, C)`` matrices, ``C = H M``.

    Row ``h R + r`` holds head ``h``'s column ``r`` in channels ``h M .. h M + M`` and zeros elsewhere,
    so one ``(N x C) @ (C x H R)`` product serves all heads. Built with channels innermost (fast
    broadcasting); the batch order ``Bf`` is that of :func:`_channels_last_view`.
    """
    h, m, r = u.shape[-4], u.shape[-2], u.shape[-1]
    per = u.transpose(-3, -4).reshape(-1, h, m, r).permute(0, 3, 1, 2).reshape(-1, 1, r, h * m)
    mask = torch.eye(h, dtype=u.dtype, device=u.device).repeat_interleave(m, dim=1).view(1, h, 1, h * m)
    return (per * mask).reshape(-1, h * r, h * m)


def _transpose_times(x: Tensor, u: Tensor) -> Tensor:
    """``X^T u`` for matrices ``x (..., M, N)`` and ``u (..., M, R)`` -> ``(..., N, R)``.

    For a channels-last view, all heads come from one ``(N x C) @ (C x H R)`` product with ``u``
    laid out block-diagonally, reading ``x`` once and returning a strided view.
    """
    y = _channels_last_view(x)
    if y is None:
        return x.transpose(-1, -2) @ u
    if torch.is_grad_enabled() and (x.requires_grad or u.requires_grad):
        return _TransposeTimes.apply(x, u)
    return _from_channels_last(torch.bmm(y, head_loadings_t(u).transpose(1, 2)), x).transpose(-1, -2)


class _TransposeTimes(torch.autograd.Function):
    """:func:`_transpose_times` of a channels-last view under autograd, whose ``x`` gradient is a tensor of its own
    in ``x``'s layout rather than a view.

    The window matrices have three uses (their Gram matrices, ``X v0`` and this product), and this product's
    gradient arrives first. Through autograd's own product it arrived as a view, which autograd does not add the
    others into in place (it takes over only a first gradient that shares its memory with nothing): the second
    one made a new tensor the size of the windows of every shift (23 MiB a mixer at the hippocampus recipe's
    second level; ``benchmarks/results/session34/window_path_sums.py``). Same values as autograd's.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, u: Tensor) -> Tensor:
        y = _channels_last_view(x)
        assert y is not None
        lt = head_loadings_t(u)  # (Bf, H R, C)
        ctx.save_for_backward(x, lt)
        return _from_channels_last(torch.bmm(y, lt.transpose(1, 2)), x).transpose(-1, -2)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dv: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, lt = ctx.saved_tensors
        *lead, h, w, m, n = x.shape
        r = dv.shape[-1]
        dvc = dv.permute(*range(len(lead)), -3, -2, -4, -1).reshape(-1, n, h * r)  # (Bf, N, H R), as the product's
        dx = du = None
        if ctx.needs_input_grad[0]:  # dX_h = u_h dv_h^T: all heads as one (N x H R) @ (H R x C) product
            dx = pool.empty_like(x)
            dy = _channels_last_view(dx)
            assert dy is not None
            torch.bmm(dvc, lt, out=dy)
        if ctx.needs_input_grad[1]:  # du_h = X_h dv_h: the diagonal blocks of Y^T dV
            y = _channels_last_view(x)
            assert y is not None
            blocks = torch.bmm(y.transpose(1, 2), dvc).view(-1, h, m, h, r).diagonal(dim1=1, dim2=3)  # (Bf, M, R, H)
            du = blocks.reshape(*lead, w, m, r, h).permute(*range(len(lead)), -1, -4, -3, -2)
        return dx, du


def _batch_last(g: Tensor, m: int) -> Tensor:
    """Gram matrices ``g (..., M, M)`` as ``(M, M, Bf)``, the layout of :func:`_rank1_hals_step`."""
    return g.reshape(-1, m * m).t().contiguous().view(m, m, -1)


def _rank1_hals_step(
    g_xv: Tensor, g_vv: Tensor, u: Tensor, a: Tensor, eps: float
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """One rank-1 HALS iteration in Gram form; the state ``(u, a)`` stands for ``v = a X^T u``.

    ``u <- relu(X v) / (v.v + eps)`` with ``X v = a G u`` (``g_xv``) and ``v.v = a^2 u^T G u`` (``g_vv``).
    Batch-last layout (``g (M, M, Bf)``, ``u (M, Bf)``, ``a (Bf,)``) keeps every operation vectorised
    over the many tiny matrices. Returns the new state and ``(G_xv u, G_vv u, v.v)``, which the
    backward pass (:func:`_gram_loop_backward`) reads.
    """
    gu = (g_xv * u.unsqueeze(0)).sum(dim=1)
    guv = gu if g_vv is g_xv else (g_vv * u.unsqueeze(0)).sum(dim=1)
    vv = (a * a) * (u * guv).sum(dim=0)
    u = torch.relu(a * gu) / (vv + eps)
    return u, 1.0 / ((u * u).sum(dim=0) + eps), (gu, guv, vv)


def _gram_loop(
    g: Tensor, g_left: Tensor, u: Tensor, tracked: int, untracked: int, eps: float, detached_start: bool = False,
    record: list[tuple[Tensor, ...]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Rank-1 HALS in Gram form from ``u (M, Bf)``: ``untracked`` steps without gradient, then ``tracked``.

    The start stands for ``v = X^T u / (u.u + eps)``; ``detached_start`` says that this ``v`` is a
    constant for autograd (it came from untracked work), as the untracked steps' last ``v`` is.
    ``record`` receives, per tracked step, its state ``(u, a)``, its :func:`_rank1_hals_step` products
    and whether it read ``g_left``.
    """
    a = 1.0 / ((u * u).sum(dim=0) + eps)
    with torch.no_grad():
        g_const = g.detach()
        for _ in range(untracked):
            u, a, _ = _rank1_hals_step(g_const, g_const, u, a, eps)
    for i in range(tracked):
        left = i == 0 and (untracked > 0 or detached_start)  # the previous v is a constant here
        state = (u, a)
        u, a, products = _rank1_hals_step(g_left, g_const, u, a, eps) if left else _rank1_hals_step(g, g, u, a, eps)
        if record is not None:
            record.append((*state, *products, left))
    return u, a


def _gram_loop_backward(
    g: Tensor, g_left: Tensor, u0: Tensor, u: Tensor, a: Tensor, record: list[tuple[Tensor, ...]], eps: float,
    du: Tensor | None, da: Tensor | None, start_tracked: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients ``(dg, dg_left, du0)`` of :func:`_gram_loop`'s result ``(u, a)``, by hand, from its ``record``.

    Per tracked step (reversed), with ``D = v.v + eps``, ``u' = relu(a G_xv u) / D``, ``a' = 1 / (u'.u' + eps)``:
    ``a'`` passes ``-2 a'^2 da' u'`` to ``u'``; ``u'`` passes ``du' / D`` to the ReLU's input ``p = a G_xv u``
    (where ``u' > 0``) and ``-(du'.u') / D`` to ``v.v = a^2 u^T G_vv u``; those to ``a``, ``u`` and the Gram
    matrices (``dG += d(G u) u^T``, ``du += G^T d(G u)``). Two passes over the Gram matrices per step,
    where autograd needs five and a recomputation. ``du0`` (``None`` unless ``start_tracked``) includes
    the start's ``a = 1 / (u0.u0 + eps)``.
    """
    dg = dg_left = None  # allocated by the first step that reads the matrix
    du = torch.zeros_like(u) if du is None else du
    da = torch.zeros_like(a) if da is None else da
    for u_t, a_t, gu, guv, vv, left in reversed(record):
        du = du - (2.0 * a * a * da) * u  # through a' = 1 / (u'.u' + eps)
        d = vv + eps
        dvv = -(du * u).sum(dim=0) / d
        dp = (du / d) * (u > 0)
        dgu = dp * a_t
        da = (dp * gu).sum(dim=0) + dvv * 2.0 * a_t * (u_t * guv).sum(dim=0)
        dguv = (dvv * a_t * a_t) * u_t
        du = (dvv * a_t * a_t) * guv
        g_xv = g_left if left else g
        if left:  # G_vv is the constant G here: it passes its gradient to u only
            du = du + (g * dguv.unsqueeze(1)).sum(dim=0)
            dg_left = torch.zeros_like(g_left) if dg_left is None else dg_left
            dg_left.addcmul_(dgu.unsqueeze(1), u_t.unsqueeze(0))
        else:
            dgu = dgu + dguv
            dg = torch.zeros_like(g) if dg is None else dg
            dg.addcmul_(dgu.unsqueeze(1), u_t.unsqueeze(0))
        du = du + (g_xv * dgu.unsqueeze(1)).sum(dim=0)  # G_xv^T d(G_xv u)
        u, a = u_t, a_t
    if not start_tracked:
        return dg, dg_left, None
    return dg, dg_left, du - (2.0 * a * a * da) * u0  # through the start's a = 1 / (u0.u0 + eps)


class _GramLoop(torch.autograd.Function):
    """:func:`_gram_loop` as one autograd node with a hand-written backward (:func:`_gram_loop_backward`).

    Saves the inputs and, per tracked step, its state and ``M x Bf`` products (no ``M x M`` ones):
    the graph holds one node instead of dozens of small operations, and the backward pass neither
    recomputes the loop nor records it.
    """

    @staticmethod
    def forward(
        ctx: Any, g: Tensor, g_left: Tensor, u: Tensor, tracked: int, untracked: int, eps: float, detached: bool
    ):
        record: list[tuple[Tensor, ...]] = []
        out_u, out_a = _gram_loop(g, g_left, u, tracked, untracked, eps, detached, record)
        flat = [t for step in record for t in step[:5]]
        ctx.save_for_backward(g, g_left, u, out_u, out_a, *flat)
        ctx.lefts = [step[5] for step in record]
        ctx.settings = (eps, untracked == 0)  # else the start reaches the tracked steps through no_grad ones
        return out_u, out_a

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, du: Tensor | None, da: Tensor | None):
        g, g_left, u0, u, a, *flat = ctx.saved_tensors
        eps, start_tracked = ctx.settings
        record = [(*flat[5 * i : 5 * i + 5], left) for i, left in enumerate(ctx.lefts)]
        dg, dg_left, du0 = _gram_loop_backward(
            g, g_left, u0, u, a, record, eps, du, da, start_tracked and ctx.needs_input_grad[2]
        )
        return dg, dg_left, du0, None, None, None, None


def nndsvd(x: Tensor, rank: int, fill: float | None = None) -> tuple[Tensor, Tensor]:
    """Nonnegative double SVD initialisation (Boutsidis & Gallopoulos 2008) for ``x (..., M, N)``.

    Works on any number of batch dimensions. ``fill`` replaces exact zeros (NNDSVDa uses the mean
    of ``x``), which multiplicative updates could never leave.
    """
    u_svd, s, vh = torch.linalg.svd(x, full_matrices=False)
    v_svd = vh.transpose(-1, -2)
    us, vs = [], []
    for r in range(rank):
        if r >= s.shape[-1]:
            us.append(torch.zeros_like(u_svd[..., 0]))
            vs.append(torch.zeros_like(v_svd[..., 0]))
            continue
        u, v, sigma = u_svd[..., r], v_svd[..., r], s[..., r : r + 1]
        up, un, vp, vn = u.clamp(min=0), (-u).clamp(min=0), v.clamp(min=0), (-v).clamp(min=0)
        nup, nun = up.norm(dim=-1, keepdim=True), un.norm(dim=-1, keepdim=True)
        nvp, nvn = vp.norm(dim=-1, keepdim=True), vn.norm(dim=-1, keepdim=True)
        mp, mn = nup * nvp, nun * nvn
        use_pos = mp >= mn
        tiny = torch.finfo(x.dtype).tiny
        scale = torch.sqrt(sigma * torch.where(use_pos, mp, mn))
        uu = torch.where(use_pos, up / (nup + tiny), un / (nun + tiny)) * scale
        vv = torch.where(use_pos, vp / (nvp + tiny), vn / (nvn + tiny)) * scale
        us.append(uu)
        vs.append(vv)
    u0, v0 = torch.stack(us, dim=-1), torch.stack(vs, dim=-1)
    if fill is not None:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        u0 = torch.where(u0 > 0, u0, mean * fill)
        v0 = torch.where(v0 > 0, v0, mean * fill)
    return u0, v0


class NMF(nn.Module):
    """Rank-R NMF of batched nonnegative matrices ``(..., M, N)`` returning ``U V^T``.

    Args:
        rows: M, the number of rows (needed for the fixed initialisation buffers).
        rank: R.
        num_iters: iterations per forward pass; change it on a trained model with ``set_nmf_iters``.
        solver: ``"hals"`` (projected coordinate descent) or ``"mu"`` (multiplicative updates).
        init: ``"fixed_uv"`` (the paper's: fixed buffers ``u0 (M, R)`` and ``v0 (N, R)``, ``U`` updated
            first from ``v0``), ``"fixed_u"`` (a fixed ``U0`` and its least-squares ``V0``), ``"random"``
            (fresh uniform ``U0`` per call) or ``"nndsvd"``; ``None``: ``fixed_uv`` where ``columns`` are
            given, else ``fixed_u`` (:meth:`NMFConfig.init_for`). Buffers are drawn once from ``seed`` and
            saved in the state dict.
        backprop_iters: backpropagate through only the last k iterations (1 = one-step gradient);
            ``None`` unrolls all of them.
        seed: seed of the fixed initialisation.
        columns: N for ``"fixed_uv"``: an int, or the window shape whose voxels (row-major) are the columns.
        eps: denominator guard; ``None`` picks one per compute dtype (:func:`eps_for`), the paper uses 1e-8.
        fused: take the Gram-form rank-1 HALS (module docstring) where it applies; ``False`` always
            runs the plain iterations (same values up to rounding; for comparisons and benchmarks).

    The defaults are :class:`NMFConfig`'s; :meth:`from_config` builds the layer from one.
    """

    def __init__(
        self,
        rows: int,
        rank: int = NMFConfig.rank,
        num_iters: int = NMFConfig.num_iters,
        solver: Solver = NMFConfig.solver,
        init: Init | None = NMFConfig.init,
        backprop_iters: int | None = NMFConfig.backprop_iters,
        seed: int = NMFConfig.seed,
        columns: int | Sequence[int] | None = None,
        eps: float | None = NMFConfig.eps,
        fused: bool = True,
    ) -> None:
        super().__init__()
        config = NMFConfig(rank, num_iters, solver, init, backprop_iters, seed, eps)  # validates
        if rows < 1:
            raise ValueError("NMF needs rows >= 1")
        init = config.init_for(columns is not None)
        self.rows, self.rank, self.num_iters = rows, rank, num_iters
        self.solver, self.init, self.backprop_iters, self.eps = solver, init, backprop_iters, eps
        self.fused = fused
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("u0", torch.rand(rows, rank, generator=generator))
        self.column_shape: tuple[int, ...] | None = None
        if init == "fixed_uv":
            if columns is None:
                raise ValueError("the fixed_uv init needs the number of columns (window voxels); "
                                 "the global variant has no fixed window")
            self.column_shape = (columns,) if isinstance(columns, int) else tuple(int(c) for c in columns)
            if min(self.column_shape) < 1:
                raise ValueError(f"NMF columns must be >= 1, got {columns!r}")
            self.register_buffer("v0", torch.rand(math.prod(self.column_shape), rank, generator=generator))

    @classmethod
    def from_config(cls, rows: int, config: NMFConfig, columns: int | Sequence[int] | None = None,
                    fused: bool = True) -> NMF:
        """The layer with ``config``'s settings for matrices of ``rows`` rows (and ``columns``, see :class:`NMF`)."""
        return cls(rows, config.rank, config.num_iters, config.solver, config.init, config.backprop_iters,
                   config.seed, columns, config.eps, fused)

    def extra_repr(self) -> str:
        grad = "full" if self.backprop_iters is None else f"last {self.backprop_iters}"
        return (
            f"rows={self.rows}, rank={self.rank}, num_iters={self.num_iters}, solver={self.solver}, "
            f"init={self.init}, grad={grad}"
        )

    def eps_for(self, dtype: torch.dtype) -> float:
        """The denominator guard for computations in ``dtype``."""
        return eps_for(dtype) if self.eps is None else self.eps

    def initial_u(self, x: Tensor) -> Tensor:
        """Starting ``U (..., M, R)`` for matrices ``x (..., M, N)`` (only their batch shape unless ``nndsvd``)."""
        batch = x.shape[:-2]
        if self.init in ("fixed_u", "fixed_uv"):
            return self.u0.to(x.dtype).expand(*batch, self.rows, self.rank)
        if self.init == "random":
            return torch.rand(*batch, self.rows, self.rank, dtype=x.dtype, device=x.device)
        fill = 1e-2 if self.solver == "mu" else None
        return nndsvd(x.detach(), self.rank, fill=fill)[0]

    def initial_v(self, shape: Sequence[int] | None = None) -> Tensor:
        """The ``fixed_uv`` buffer ``v0 (N, R)`` for columns of ``shape`` (default: the configured one).

        A smaller window (an input smaller than the window) takes the entries of its own positions,
        the corner sub-box of the configured window.
        """
        if self.column_shape is None:
            raise ValueError(f"NMF init {self.init!r} has no v0")
        shape = self.column_shape if shape is None else tuple(int(s) for s in shape)
        if shape == self.column_shape:
            return self.v0
        if len(shape) != len(self.column_shape) or any(s > c for s, c in zip(shape, self.column_shape)):
            raise ValueError(f"NMF built for {self.column_shape} columns got windows of {shape}")
        box = self.v0.view(*self.column_shape, self.rank)[tuple(slice(0, s) for s in shape)]
        return box.reshape(-1, self.rank)

    @property
    def fusable(self) -> bool:
        """Whether :meth:`decompose` can take the fused rank-1 HALS path (for nonnegative input)."""
        return (
            self.fused and self.solver == "hals" and self.rank == 1 and self.init != "nndsvd"
            and not (self.init == "fixed_uv" and self.num_iters == 0)
        )

    def decompose(
        self,
        x: Tensor,
        warm_start: tuple[Tensor, Tensor] | None = None,
        *,
        nonnegative: bool = False,
        column_shape: Sequence[int] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Factors ``U (..., M, R)`` and ``V (..., N, R)`` of ``x (..., M, N)``, in ``x``'s dtype.

        ``warm_start`` replaces the initialisation with given factors (then every iteration is
        tracked by autograd unless ``backprop_iters`` says otherwise). ``nonnegative=True`` is the
        caller's promise that ``x >= 0`` (e.g. after a ReLU), which skips the check that guards the
        fused rank-1 path. ``column_shape`` is the window the columns come from (``fixed_uv``).
        Factors may be strided views (of a channels-last window buffer).
        """
        if x.shape[-2] != self.rows:
            raise ValueError(f"NMF built for {self.rows} rows got matrices of shape {tuple(x.shape[-2:])}")
        out_dtype = x.dtype
        dtype = _compute_dtype(x.dtype)
        v0 = None
        if self.init == "fixed_uv" and warm_start is None:
            v0 = self.initial_v(column_shape).to(dtype)
            if v0.shape[0] != x.shape[-1]:
                raise ValueError(f"NMF built for {v0.shape[0]} columns got matrices of shape {tuple(x.shape[-2:])}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            xc = x.to(dtype)
            eps = self.eps_for(dtype)
            fused = warm_start is None and self.fusable and (nonnegative or _is_nonnegative(xc))
            if fused and not traced():  # the Gram matrices tell whether to rescale, at no extra pass over x
                solved = self._solve_fused(xc, eps, v0, check_range=True)
                if solved is not None:
                    return solved[0].to(out_dtype), solved[1].to(out_dtype)
            # Huge matrices are factorised at unit scale (their Gram products would overflow); U takes the
            # scale back. NMF is scale-equivariant, and ordinary magnitudes are left bitwise untouched.
            peak = xc.detach().abs().amax(dim=(-2, -1), keepdim=True) if xc.numel() else None
            scale = None if peak is None else torch.where(peak > _RESCALE_ABOVE, peak, torch.ones_like(peak))
            if scale is not None:
                xc = xc / scale
            if fused:
                solved = self._solve_fused(xc, eps, v0, check_range=False)
                assert solved is not None
                u, v = solved
            else:
                start = None if warm_start is None else (warm_start[0].to(dtype) / (scale if scale is not None else 1),
                                                         warm_start[1].to(dtype))
                u, v = self._solve(xc.contiguous(), eps, start, v0)
            if scale is not None:
                u = u * scale
        return u.to(out_dtype), v.to(out_dtype)

    def _solve_fused(
        self, x: Tensor, eps: float, v0: Tensor | None, check_range: bool
    ) -> tuple[Tensor, Tensor] | None:
        """Rank-1 HALS through the Gram matrices (module docstring); same schedule as :meth:`_solve`.

        With ``check_range``, ``None`` where :func:`grams_in_range` says the matrices need rescaling.
        """
        solved = self.solve_gram_form(x, eps, v0, check_range=check_range)
        if solved is None:
            return None
        u, a = solved
        # v = a X^T u: scaling u first keeps v a view of the product's output.
        return u, _transpose_times(x, u * a[..., None, None])

    def solve_gram_form(
        self,
        parts: Tensor,
        eps: float,
        v0: Tensor | None = None,
        *,
        sums: Callable[[Tensor], Tensor] | None = None,
        times_v0: Callable[[Tensor], Tensor] | None = None,
        check_range: bool = True,
        grams: Tensor | None = None,
    ) -> tuple[Tensor, Tensor] | None:
        """Rank-1 HALS of nonnegative matrices ``X`` through their Gram matrices: ``u (..., M, 1)`` and
        ``a (...)`` with ``v = a X^T u`` (the fused path of :meth:`decompose`, and the mixer's sub-block path).

        The matrices may be known by parts: ``parts (..., M, Q)`` are the matrices themselves, or
        pieces whose Gram matrices ``sums`` adds up to theirs (the mixer's sub-blocks, summed per
        window of every shift). ``v0`` is the ``fixed_uv`` init's buffer (:meth:`initial_v`), ``None``
        for the other inits; its first ``U`` step needs ``X v0``: ``times_v0(v0)``, by default
        ``parts @ v0``. With ``check_range``, ``None`` where :func:`grams_in_range` says the matrices
        need rescaling (which :meth:`decompose` does). ``grams``: the Gram matrices of ``parts`` where the
        caller has already computed them (autograd then reaches ``parts`` only through them; not with a
        truncated gradient, which needs :func:`gram_pair`'s second matrices).
        """
        if not self.fusable:
            raise ValueError("the Gram form needs the rank-1 HALS solver and an init other than nndsvd")
        if (v0 is None) == (self.init == "fixed_uv"):
            raise ValueError("the Gram form needs v0 exactly for the fixed_uv init")
        if grams is not None and self.needs_left_gram and torch.is_grad_enabled() and grams.requires_grad:
            raise ValueError("a truncated gradient needs the Gram matrices from gram_pair(parts, left=True)")
        g_parts, g_parts_left = gram_pair(parts, left=self.needs_left_gram) if grams is None else (grams, grams)
        g = g_parts if sums is None else sums(g_parts)
        if check_range and not grams_in_range(g):
            return None
        if self.needs_left_gram and g_parts_left is not g_parts:
            g_left = g_parts_left if sums is None else sums(g_parts_left)
        else:  # not read: the same tensor twice
            g_left = g
        start = None
        if v0 is not None:
            # X v0 as a broadcast product and sum: the windows' matrices are strided views, on which matmul runs one
            # matrix-vector product per matrix (and an outer product per matrix backward): 1.6-2.6x slower at the
            # hippocampus recipe's level 2 (benchmarks/results/session31/times_v0.py).
            xv0 = (parts * v0.mT).sum(-1, keepdim=True) if times_v0 is None else times_v0(v0)
            start = self._first_u(xv0, v0, eps)
        return self._solve_grams(g, g_left, eps, start)

    def _first_u(self, xv0: Tensor, v0: Tensor, eps: float) -> Tensor:
        """The ``fixed_uv`` init's first ``U`` step ``relu(X v0) / (v0.v0 + eps)`` from ``xv0 = X v0 (..., M, 1)``.

        Tracked by autograd only when every iteration is.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._schedule[1] == 0):
            return torch.relu(xv0) / ((v0 * v0).sum() + eps)

    @property
    def _schedule(self) -> tuple[int, int]:
        """Iterations ``(tracked, untracked)`` by autograd: the last ``backprop_iters``, or all."""
        tracked = self.num_iters if self.backprop_iters is None else min(self.backprop_iters, self.num_iters)
        return tracked, self.num_iters - tracked

    @property
    def needs_left_gram(self) -> bool:
        """Whether :meth:`_solve_grams` reads ``g_left`` (a truncated gradient)."""
        tracked, untracked = self._schedule
        return tracked > 0 and untracked > 0

    def _solve_grams(
        self, g: Tensor, g_left: Tensor, eps: float, start: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Rank-1 HALS of matrices known only by their Gram matrices ``g (..., M, M)`` (see :func:`gram_pair`).

        Returns ``u (..., M, 1)`` and ``a (...)`` with the matrices' ``v = a X^T u``. ``start`` is the
        ``fixed_uv`` init's first ``U`` step (:meth:`_first_u`), which counts as the first iteration;
        other inits start from :meth:`initial_u`.
        """
        tracked, untracked = self._schedule
        m, batch = self.rows, g.shape[:-2]
        if start is None:
            with torch.no_grad():
                start = self.initial_u(g)
            detached = False
        else:  # the first iteration is done: the loop runs the rest
            detached, untracked = untracked > 0, max(0, untracked - 1)
            tracked = self.num_iters - 1 - untracked
        # (M, M, Bf) through a 2D transpose (8x faster on the CPU than the same copy as a 3D permute).
        shared = g_left is g
        g = _batch_last(g, m)
        g_left = g if shared else _batch_last(g_left, m)
        u = start.reshape(-1, m).t().contiguous()  # (M, Bf)
        if tracked > 0 and torch.is_grad_enabled() and (g.requires_grad or u.requires_grad):
            u, a = _GramLoop.apply(g, g_left, u, tracked, untracked, eps, detached)
        else:
            u, a = _gram_loop(g, g_left, u, tracked, untracked, eps, detached)
        return u.t().reshape(*batch, m, 1), a.reshape(batch)

    def _solve(
        self, x: Tensor, eps: float, start: tuple[Tensor, Tensor] | None, v0: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        update = _UPDATES[self.solver]
        xt = x.transpose(-1, -2)
        tracked, untracked = self._schedule
        if start is not None:
            u, v = start
        elif v0 is not None:  # fixed_uv: both factors are constants, U is updated first
            u = self.initial_u(x)
            v = v0.expand(*x.shape[:-2], *v0.shape)
        else:  # with no iterations at all, the initial projection is the only path for gradients
            with torch.set_grad_enabled(torch.is_grad_enabled() and (untracked == 0 or tracked == 0)):
                u = self.initial_u(x)
                v = _solve_factor(xt, u, eps)
        with torch.no_grad():
            for _ in range(untracked):
                u = update(x, u, v, eps)
                v = update(xt, v, u, eps)
        for _ in range(tracked):
            u = update(x, u, v, eps)
            v = update(xt, v, u, eps)
        return u, v

    def forward(self, x: Tensor, warm_start: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Rank-R reconstruction ``U V^T`` of nonnegative ``x (..., M, N)``."""
        u, v = self.decompose(x, warm_start)
        return u @ v.transpose(-1, -2)


def set_nmf_iters(model: nn.Module, num_iters: int) -> int:
    """Set the iteration count of every NMF layer in ``model`` (the paper's test-time speed-up).

    Returns the number of layers changed, so callers can tell a model without NMF layers.
    """
    if num_iters < 0:
        raise ValueError("num_iters must be >= 0")
    layers = [m for m in model.modules() if isinstance(m, NMF)]
    for layer in layers:
        layer.num_iters = num_iters
    return len(layers)
