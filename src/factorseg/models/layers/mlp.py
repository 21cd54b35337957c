"""The Factorizer's per-voxel MLP, and its residual branch with a memory diet for training."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from factorseg.models.layers import pool
from factorseg.models.layers.conv import conv_nd, pointwise_weight
from factorseg.models.layers.dropout import Dropout, as_factor, keep_mask
from factorseg.models.layers.fastpath import (
    add_row_products_, block_rows, can_modify_inplace, linear, linear_gelu, row_blocks, unrecorded_eager,
)
from factorseg.models.layers.norm import fold_norm, layer_norm_rows, norm_linear_grads, normalized


class MLP(nn.Module):
    """Per-voxel two-layer MLP (1x1 convolutions) with GELU and dropout."""

    def __init__(self, channels: int, ratio: float, dropout: float, spatial_dims: int) -> None:
        super().__init__()
        conv, hidden = conv_nd(spatial_dims), int(round(channels * ratio))
        self.net = nn.Sequential(
            conv(channels, hidden, 1), nn.GELU(), Dropout(dropout), conv(hidden, channels, 1), Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_channels_last(x.movedim(1, -1)).movedim(-1, 1)

    def forward_channels_last(self, x: Tensor) -> Tensor:
        """The same MLP on ``(B, *spatial, C)``: two matrix products over all voxels."""
        first, act, drop1, second, drop2 = self.net
        h = F.linear(x, pointwise_weight(first), first.bias)
        if can_modify_inplace(h):
            h = torch.ops.aten.gelu_(h, approximate=act.approximate)
        else:
            h = F.gelu(h, approximate=act.approximate)
        return drop2(F.linear(drop1(h), pointwise_weight(second), second.bias))

    def add_norm_to_(self, y: Tensor, norm: nn.LayerNorm) -> Tensor:
        """``y += mlp(norm(y))`` in place on a contiguous channels-last ``(B, *spatial, C)`` ``y``, for inference.

        Runs over blocks of voxels (:func:`row_blocks`) small enough that their normalised rows and hidden
        layer stay in the cache (the LayerNorm by :func:`~factorseg.models.layers.norm.layer_norm_rows`, its
        affine map folded into the first product), and the second product accumulates straight into ``y``: no map-sized
        temporary (at 64^3 with 32 channels, 1.9x faster than the whole-map formulation, whose values it
        gives: every step is row by row). With dropout drawing or autocast, the whole-map formulation.
        """
        first, act, drop1, second, drop2 = self.net
        drawing = any(d.training and d.p > 0 for d in (drop1, drop2))
        if drawing or second.weight.dtype != y.dtype or not unrecorded_eager(y, *self.parameters(), *norm.parameters()):
            return y.add_(self.forward_channels_last(norm(y)))
        w1, b1 = fold_norm(pointwise_weight(first), first.bias, norm.weight, norm.bias)
        w2 = pointwise_weight(second)
        for rows in row_blocks(y.view(-1, y.shape[-1]), w1.shape[0]):
            h = linear_gelu(layer_norm_rows(rows, norm.eps)[0], w1, b1, act.approximate)
            rows.add_(linear(h, w2, second.bias))
        return y


def _hidden(normed: Tensor, w1: Tensor, b1: Tensor | None, approximate: str, keep: Tensor | None) -> Tensor:
    """The hidden layer ``gelu(normed W1^T + b1)``, dropped units zeroed (unscaled: the scale is in ``W2``).

    ``keep`` is a mask in :func:`as_factor` form.
    """
    h = linear_gelu(normed, w1, b1, approximate)
    return h if keep is None else h.mul_(keep)


def _split(t: Tensor | None, n: int) -> Iterable[Tensor | None]:
    """``t.split(n)`` (row blocks), or ``None`` for every block (``zip`` stops at the rows' last block)."""
    return itertools.repeat(None) if t is None else t.split(n)


class _MLPResidual(torch.autograd.Function):
    """``y + drop(W2 drop(gelu(W1 LN(y) + b1)) + b2)`` on channels-last rows ``(V, C)``, saving little.

    The plain formulation keeps, per voxel, the LayerNorm input and output, the GELU input and output,
    the LayerNorm statistics and both dropout masks: about 6.75 C values' worth. This function keeps
    the input ``y``, the LayerNorm statistics and the (boolean) masks, 1.75 C, and recomputes the rest
    in the backward pass: the normalisation (from the saved statistics, without its affine map, which is
    folded into the first product's weights: :func:`~factorseg.models.layers.norm.fold_norm`), the first
    product (the GELU input) and the GELU: one matrix product more per backward pass. The LayerNorm's
    parameters get their gradients from the first product's (:func:`~factorseg.models.layers.norm.norm_linear_grads`).

    Both passes run over blocks of rows (:func:`~factorseg.models.layers.fastpath.block_rows`), the
    weight gradients accumulating block by block: no map-sized normalised copy, hidden layer or hidden
    gradient is ever allocated (the plain backward pass holds four hidden-width maps at once), and each
    block's chain of row-wise steps stays in the cache. The dropout masks are applied block by block as
    float factors (:func:`~factorseg.models.layers.dropout.as_factor`: 3-5x faster on the CPU than
    ``where`` on the boolean masks), and both dropout scales are folded into the second product's
    weights and the weight gradients. Same values and gradients as the plain formulation, up to
    rounding (tests/test_memory_diet.py).
    """

    @staticmethod
    def forward(
        ctx: Any, y: Tensor, ln_w: Tensor | None, ln_b: Tensor | None, w1: Tensor, b1: Tensor | None,
        w2: Tensor, b2: Tensor | None, eps: float, approximate: str,
        keep: tuple[tuple[Tensor, float], tuple[Tensor, float]] | None,
    ) -> Tensor:
        c, hidden = y.shape[-1], w1.shape[0]
        rows = y.reshape(-1, c)
        keep1, keep2 = keep if keep is not None else (None, None)
        w1f, b1f = fold_norm(w1, b1, ln_w, ln_b)
        w2s = w2 if keep1 is None else w2 * keep1[1]
        out = pool.empty_like(y, contiguous=True)  # (y's shape, not a view: see mlp_residual)
        n = block_rows(hidden, rows.element_size())
        stats = []
        for r, o, k1, k2 in zip(
            rows.split(n), out.view(-1, c).split(n), _split(None if keep1 is None else keep1[0], n),
            _split(None if keep2 is None else keep2[0], n),
        ):
            normed, mean, rstd = layer_norm_rows(r, eps)
            stats.append((mean, rstd))
            z = linear(_hidden(normed, w1f, b1f, approximate, as_factor(k1, r.dtype)), w2s, b2)
            if k2 is None:
                torch.add(r, z, out=o)
            else:
                torch.add(r, z.mul_(as_factor(k2, z.dtype)), alpha=keep2[1], out=o)
        mean, rstd = (torch.cat(s) for s in zip(*stats))
        masks = [] if keep is None else [keep1[0], keep2[0]]
        ctx.save_for_backward(rows, mean, rstd, ln_w, ln_b, w1, w1f, b1f, w2, *masks)  # (the folded weights: once)
        ctx.settings = (eps, approximate, None if keep is None else (keep1[1], keep2[1]))
        ctx.shape = y.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        rows, mean, rstd, ln_w, ln_b, w1, w1f, b1f, w2, *masks = ctx.saved_tensors
        eps, approximate, scales = ctx.settings
        s1, s2 = scales if scales is not None else (1.0, 1.0)
        c, hidden = rows.shape[-1], w1.shape[0]
        need = ctx.needs_input_grad
        ln_mask = [need[0], ln_w is not None and need[1], ln_b is not None and need[2]]
        w2s = w2 * (s1 * s2)
        dy = pool.empty(ctx.shape, rows.dtype, rows.device) if need[0] else None
        a1, dw2 = w1.new_zeros(w1.shape), w2.new_zeros(w2.shape)
        db1, db2 = w1.new_zeros(hidden), w2.new_zeros(c)
        n = block_rows(hidden, rows.element_size())
        k1s, k2s = (_split(m, n) for m in (masks or [None, None]))
        for r, d, m, sd, k1, k2, o in zip(
            rows.split(n), dout.reshape(-1, c).split(n), mean.split(n), rstd.split(n), k1s, k2s,
            _split(None if dy is None else dy.view(-1, c), n),
        ):
            xhat = normalized(r, m, sd)
            h = linear(xhat, w1f, b1f)
            f1 = as_factor(k1, r.dtype)
            dz = d if k2 is None else d * as_factor(k2, d.dtype)  # (s2 dz: the true one)
            if need[5]:
                g = F.gelu(h, approximate=approximate)
                add_row_products_(dw2, dz, g if f1 is None else g.mul_(f1))
                del g
            db2 += dz.sum(0)
            dg = linear(dz, w2s.t())
            dh = torch.ops.aten.gelu_backward(dg if f1 is None else dg.mul_(f1), h, approximate=approximate)
            del h, dz, dg
            if need[3] or ln_mask[1]:
                add_row_products_(a1, dh, xhat)
            db1 += dh.sum(0)
            del xhat
            if o is not None:
                dn = linear(dh, w1.t())
                dr = torch.ops.aten.native_layer_norm_backward(dn, r, [c], m, sd, ln_w, ln_b, [True, False, False])[0]
                torch.add(d, dr, out=o)
            del dh
        dw1, dlw, dlb = norm_linear_grads(a1, db1, w1, ln_w, ln_b)
        return (
            dy, dlw if ln_mask[1] else None, dlb if ln_mask[2] else None, dw1 if need[3] else None,
            db1 if need[4] else None, dw2.mul_(s1 * s2) if need[5] else None,
            db2.mul_(s2) if need[6] else None, None, None, None,
        )


def mlp_residual(y: Tensor, norm: nn.LayerNorm, mlp: MLP) -> Tensor:
    """``y + mlp(norm(y))`` for training, on channels-last ``y``, with :class:`_MLPResidual`'s memory diet.

    The dropout masks are drawn like :class:`Dropout` draws them, in the same order (hidden, then
    output) from PyTorch's default generator: the same masks as the plain formulation's.
    """
    first, act, drop1, second, drop2 = mlp.net
    c = y.shape[-1]
    rows = y.reshape(-1, c)
    hidden = (rows.shape[0], first.out_channels)
    p = drop1.p if drop1.training else 0.0
    if drop2.p != drop1.p or drop2.training != drop1.training or p >= 1 or y.device.type != "cpu":
        return y + mlp.forward_channels_last(norm(y))  # (the diet's masks are the CPU Dropout's)
    keep = (keep_mask(hidden, p, y.device), keep_mask(rows.shape, p, y.device)) if p > 0 else None
    # y itself, not a view of it, goes in, and y's gradient comes out in y's shape: no view lies between that
    # gradient and the function before, where autograd may sum another into it in place (the block's mixer).
    return _MLPResidual.apply(
        y, norm.weight, norm.bias, pointwise_weight(first), first.bias, pointwise_weight(second),
        second.bias, norm.eps, act.approximate, keep,
    )
