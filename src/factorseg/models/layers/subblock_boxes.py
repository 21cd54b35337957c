"""The mixer's sub-block path one cache-sized box of sub-blocks at a time (CPU, unpadded maps).

The sub-block path reads the in-projected map in sub-block-major order (:func:`~factorseg.models.layers.windows.to_subblocks`)
and writes its output back in map order. Done map by map, every step (LayerNorm, in-projection, ReLU, the
layout copy, the Gram products, the two thin output products, the bias, dropout, the residual sum) is a
pass over a map of ``C`` values per voxel; at 128^3 with 32 channels each is 256 MiB through memory.
Here the map is cut into boxes of whole sub-blocks (:func:`~factorseg.models.layers.windows.subblock_boxes`)
small enough for the cache, and each box goes through its whole chain while it is there:

* :func:`project_boxes`: a box's voxels are normalised and projected in map order (one run of the map where the
  box is whole planes), the ReLU writes them into their sub-blocks, and the heads' Gram matrices and
  ``v0``-weighted sums the NMF reads are taken from those;
* :func:`add_output_boxes`: each box's output (two thin products, the bias) is added to the residual straight into
  its place in the map; with a dropout mask, it is laid out in map order in the cache first and masked there.

Both serve inference as they are, and training as autograd functions (:func:`project_subblocks`,
:func:`add_subblock_output`) whose backward passes run box by box the same way, recomputing the cheap
per-voxel steps in the cache instead of keeping them. The values and gradients are those of the map-by-map
formulation up to float rounding: every step is row by row or sub-block by sub-block
(``tests/test_subblock_boxes.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from factorseg.models.layers import pool
from factorseg.models.layers.dropout import Keep, as_factor
from factorseg.models.layers.fastpath import add_row_products_, block_rows, linear
from factorseg.models.layers.nmf import head_grams, heads_to_blocks
from factorseg.models.layers.norm import fold_norm, layer_norm_rows, norm_linear_grads, normalized
from factorseg.models.layers.windows import SubblockBox, WindowLayout, map_order, subblock_boxes, subblock_view

Norm = tuple[Tensor | None, Tensor | None, float]
"""A LayerNorm over the channels as ``(weight, bias, eps)``."""


def _boxes(lay: WindowLayout, edges: Sequence[int], width: int, t: Tensor) -> tuple[SubblockBox, ...]:
    """The boxes whose widest per-voxel temporary (``width`` values) fills a row block's cache share."""
    return subblock_boxes(lay, tuple(edges), block_rows(width, t.element_size()))


def _one_run(t: Tensor, i: int, box: SubblockBox) -> bool:
    """Whether ``box``'s voxels are one run of batch item ``i`` of map ``t`` (a box of whole planes): then it is read
    and written in map order, so that the map is streamed instead of gathered from and scattered into (the
    hippocampus recipe's first-level mixer, training step: 1-10 % faster, ``benchmarks/results/session34/
    mixer_step*.txt``). Otherwise (a box of parts of planes) in sub-block order, where map order would add a copy of
    its runs (the BraTS preset's in-projection at 128^3: 1.08-1.11x the time, ``mixer_128.txt``)."""
    return t[i][box.spatial].is_contiguous()


def _box_rows(t: Tensor, i: int, box: SubblockBox, edges: Sequence[int], map_order: bool) -> Tensor:
    """Batch item ``i``'s voxels of ``box`` in map ``t (B, *padded, C)`` as ``(V, C)`` rows: in map order (a view of a
    run, :func:`_one_run`), else sub-block-major (a gathered copy)."""
    place = t[i][box.spatial]
    return place.view(-1, t.shape[-1]) if map_order else subblock_view(place, box, edges).reshape(-1, t.shape[-1])


def _put_box_rows(rows: Tensor, t: Tensor, i: int, box: SubblockBox, edges: Sequence[int], map_order: bool) -> None:
    """Write ``rows``, ordered as :func:`_box_rows` gives them, into their places in map ``t``."""
    place = t[i][box.spatial]
    if map_order:
        place.copy_(rows.view(place.shape))
    else:
        subblock_view(place, box, edges).copy_(rows.view(*box.counts, *edges, t.shape[-1]))


def _times_mask(t: Tensor, mask_rows: Tensor, scale: float, in_place: bool) -> Tensor:
    """``t`` times the dropout mask's rows (ordered as ``t``'s) and ``scale``: in place, or into a new tensor. (The
    mask's factors die here, so that the next box reuses their memory while it is in the cache.)"""
    factor = as_factor(mask_rows, t.dtype).mul_(scale)
    return t.mul_(factor) if in_place else torch.mul(t, factor)


def project_boxes(
    x: Tensor, norm: Norm | None, w: Tensor, b: Tensor | None, lay: WindowLayout, edges: Sequence[int],
    head_dim: int, weights: Tensor | None, stats: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """``to_subblocks(relu(norm(x) W^T + b))`` of a channels-last unpadded map ``x (B, *spatial, C)``, box by box.

    Returns the sub-blocks ``(B, K, Q, C')``; the heads' Gram matrices of every sub-block, ``(B, 1, H, K, M, M)``
    (``M = head_dim``, the layout of :func:`~factorseg.models.layers.nmf.gram_pair`); with ``weights``
    (``(S, K, Q)``, the ``fixed_uv`` init's ``v0`` per shift and sub-block, :func:`~factorseg.models.layers.windows.subblock_weights`)
    the weighted sums of every sub-block per shift, ``(B, S, K, C')``; and with ``stats`` the LayerNorm's
    mean and inverse deviation per voxel, ``(B, K, Q, 1)``: each box's under its sub-blocks, in the order its rows
    were normalised (:func:`_one_run`), for a backward pass.
    """
    bsz, c = x.shape[0], x.shape[-1]
    cout, q, m = w.shape[0], math.prod(edges), head_dim
    heads, k = cout // m, math.prod(lay.padded) // q
    blocks = pool.empty((bsz, k, q, cout), x.dtype, x.device)
    grams = pool.empty((bsz, 1, heads, k, m, m), x.dtype, x.device)
    per_shift = None if weights is None else pool.empty((bsz, weights.shape[0], k, cout), x.dtype, x.device)
    mean = rstd = None
    if stats and norm is not None:
        mean, rstd = (pool.empty((bsz, k, q, 1), x.dtype, x.device) for _ in range(2))
    if norm is not None:
        w, b = fold_norm(w, b, norm[0], norm[1])
    for i in range(bsz):
        for box in _boxes(lay, edges, max(c, cout), x):
            in_map = _one_run(x, i, box)
            rows = _box_rows(x, i, box, edges, in_map)
            if norm is not None:
                rows, mu, sd = layer_norm_rows(rows, norm[2])
                if mean is not None and rstd is not None:  # (contiguous, in the rows' order, whichever it is)
                    mean[i, box.k].view(-1, 1).copy_(mu)
                    rstd[i, box.k].view(-1, 1).copy_(sd)
            dst = blocks[i, box.k]
            # The ReLU writes the product into its sub-blocks. (No name holds the product: a box's temporaries are
            # freed before the next box's, which then reuses their memory while it is in the cache.)
            if in_map:
                torch.clamp_min(subblock_view(linear(rows, w, b), box, edges), 0,
                                out=dst.view(*box.counts, *edges, cout))
            else:
                torch.clamp_min(linear(rows, w, b), 0, out=dst.view(-1, cout))
            grams[i, 0, :, box.k] = head_grams(dst, m)
            if weights is not None and per_shift is not None:
                _shift_sums(weights[:, box.k], dst, per_shift[i, :, box.k])
    return blocks, grams, per_shift, mean, rstd


_BROADCAST_SUMS_MAX = 128
"""Values per sub-block (``Q C``) up to which :func:`_shift_sums` takes the broadcast form rather than MKL's product."""
_BROADCAST_ADJOINT_MAX = 1024
"""The same for :func:`_add_shift_products`."""


def _shift_sums(weights: Tensor, blocks: Tensor, out: Tensor) -> None:
    """``out[s] = sum_q weights[s, :, q] blocks[:, q]``: each sub-block's weighted sum per shift, ``(S, n, C)``.

    MKL's batched product with 2 rows per matrix (``S``) is slow on small sub-blocks: up to 128 values a
    sub-block (the hippocampus recipe's 8 voxels x 16 channels) one broadcast product and sum per shift is
    1.5-2.3x faster; from 256 values the product is the faster, at 64 x 32 (the BraTS preset) 1.7-1.9x
    (``benchmarks/results/session31/shift_products.py``).
    """
    if blocks.shape[1] * blocks.shape[2] > _BROADCAST_SUMS_MAX:
        out.copy_(torch.bmm(weights.transpose(0, 1), blocks).transpose(0, 1))
        return
    for shift in range(weights.shape[0]):
        torch.sum(blocks * weights[shift].unsqueeze(-1), dim=1, out=out[shift])


def _add_shift_products(d: Tensor, weights: Tensor, grads: Tensor, inplace: bool) -> Tensor:
    """``d + sum_s weights[s]^T (x) grads[s]`` (``(n, Q, C)``, from ``weights (S, n, Q)`` and ``grads (S, n, C)``),
    in place into ``d`` where ``inplace``: the adjoint of :func:`_shift_sums`.

    MKL's batched product with an inner size of 2 (``S``) took up to 7x as long as one broadcast multiply-add
    per shift on sub-blocks of up to 512 values, was level at 864 and 6-14 % faster at 2,048 (64 x 32)
    (``benchmarks/results/session31/shift_products.py``).
    """
    if d.shape[1] * d.shape[2] > _BROADCAST_ADJOINT_MAX:
        wt, dp = weights.permute(1, 2, 0), grads.transpose(0, 1)
        return d.baddbmm_(wt, dp) if inplace else torch.baddbmm(d, wt, dp)
    for shift in range(weights.shape[0]):
        term = (weights[shift].unsqueeze(-1), grads[shift].unsqueeze(1))
        d = d.addcmul_(*term) if inplace or shift else torch.addcmul(d, *term)
    return d


def add_output_boxes(
    residual: Tensor, blocks: Tensor, left: Tensor, right: Tensor, bias: Tensor | None, keep: Keep | None,
    lay: WindowLayout, edges: Sequence[int],
) -> Tensor:
    """``residual + drop(from_subblocks(X left^T right + bias))``, box by box, into a new channels-last map.

    ``blocks (B, K, Q, C)`` are the sub-blocks ``X``, ``left`` and ``right`` ``(B K, R, C)`` each sub-block's
    factors (its output is ``X left^T right``), ``keep`` the dropout mask over the map (``None``: no dropout).
    """
    bsz, k, q, c = blocks.shape
    out = pool.empty_like(residual, contiguous=True)
    left, right = left.view(bsz, k, -1, c), right.view(bsz, k, -1, c)
    for i in range(bsz):
        for box in _boxes(lay, edges, c, blocks):
            rec = torch.bmm(torch.bmm(blocks[i, box.k], left[i, box.k].transpose(1, 2)), right[i, box.k])
            if bias is not None:
                rec = rec.add_(bias)
            place, dst = residual[i][box.spatial], out[i][box.spatial]
            # With a mask on a run of the map, the output is laid out in map order in the cache first, so that the
            # mask is read as it lies; otherwise one pass in sub-block order.
            in_map = keep is not None and _one_run(residual, i, box) and _one_run(keep[0], i, box)
            rec = map_order(rec, box, edges) if in_map else rec.view(-1, c)
            if keep is not None:
                rec = _times_mask(rec, _box_rows(keep[0], i, box, edges, in_map), keep[1], in_place=True)
            if in_map:
                torch.add(place, rec.view(place.shape), out=dst)
            else:
                torch.add(subblock_view(place, box, edges), rec.view(*box.counts, *edges, c),
                          out=subblock_view(dst, box, edges))
    return out


class _ProjectSubblocks(torch.autograd.Function):
    """:func:`project_boxes` with a LayerNorm, for training: keeps the input, the LayerNorm statistics and the sub-blocks.

    The backward pass runs box by box: the sub-blocks' gradient (from the output, the Gram matrices and the
    ``v0`` sums) and the ReLU's mask (read off the sub-blocks), the LayerNorm recomputed from its statistics
    on the box's input rows (before its affine map), the in-projection's and the LayerNorm's backward, and
    the input's gradient written into its place in the map; the weights' gradients come from sums over all
    boxes (:func:`~factorseg.models.layers.norm.norm_linear_grads`). No map-sized temporary.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, ln_w: Tensor | None, ln_b: Tensor | None, w: Tensor, b: Tensor | None, eps: float,
        lay: WindowLayout, edges: Sequence[int], head_dim: int, weights: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        blocks, grams, per_shift, mean, rstd = project_boxes(
            x, (ln_w, ln_b, eps), w, b, lay, edges, head_dim, weights, stats=True
        )
        ctx.save_for_backward(x, mean, rstd, ln_w, ln_b, w, blocks, weights)
        ctx.settings = (lay, edges, b is not None)
        ctx.set_materialize_grads(False)
        return blocks, grams, per_shift

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, dblocks: Tensor | None, dgrams: Tensor | None, dper_shift: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, mean, rstd, ln_w, ln_b, w, blocks, weights = ctx.saved_tensors
        lay, edges, has_bias = ctx.settings
        need = ctx.needs_input_grad
        c, cout = x.shape[-1], w.shape[0]
        ln_mask = [need[0], ln_w is not None and need[1], ln_b is not None and need[2]]
        dx = pool.empty_like(x, contiguous=True) if need[0] else None
        a, db = w.new_zeros(w.shape), w.new_zeros(cout)
        for i in range(x.shape[0]):
            for box in _boxes(lay, edges, max(c, cout), x):
                xb = blocks[i, box.k]
                d = xb.new_zeros(xb.shape) if dblocks is None else dblocks[i, box.k]
                if dgrams is not None:  # G_h = X_h^T X_h: dX_h = X_h (dG_h + dG_h^T); a new tensor from here on
                    g = dgrams[i, 0, :, box.k]
                    d = torch.baddbmm(d, xb, heads_to_blocks(g + g.transpose(-1, -2)))
                if dper_shift is not None and weights is not None:  # d + sum_s w_s (x) dper_shift_s
                    d = _add_shift_products(d, weights[:, box.k], dper_shift[i, :, box.k], dgrams is not None)
                # On a run of the map, the in-projection's gradient is laid out in map order (from the cache), so that
                # the box's input and statistics are read, and its input's gradient written, as they lie.
                in_map = _one_run(x, i, box)
                dh = torch.ops.aten.threshold_backward(d, xb, 0)
                dh = map_order(dh, box, edges) if in_map else dh.view(-1, cout)
                rows = _box_rows(x, i, box, edges, in_map)
                mu, sd = mean[i, box.k].view(-1, 1), rstd[i, box.k].view(-1, 1)
                if need[3] or ln_mask[1]:
                    add_row_products_(a, dh, normalized(rows, mu, sd))
                db += dh.sum(0)
                if dx is not None:
                    dr = torch.ops.aten.native_layer_norm_backward(
                        linear(dh, w.t()), rows, [c], mu, sd, ln_w, ln_b, [True, False, False]
                    )[0]
                    _put_box_rows(dr, dx, i, box, edges, in_map)
        dw, dlw, dlb = norm_linear_grads(a, db, w, ln_w, ln_b)
        return (
            dx, dlw if ln_mask[1] else None, dlb if ln_mask[2] else None, dw if need[3] else None,
            db if need[4] and has_bias else None, None, None, None, None, None,
        )


class _AddSubblockOutput(torch.autograd.Function):
    """:func:`add_output_boxes` for training: keeps the sub-blocks (kept anyway), the factors and the mask.

    The backward pass runs box by box: the output's gradient read in sub-block order and masked, the first
    thin product recomputed, then the gradients of the factors, the bias and the sub-blocks. The residual's
    gradient is the output's.
    """

    @staticmethod
    def forward(
        ctx: Any, residual: Tensor, blocks: Tensor, left: Tensor, right: Tensor, bias: Tensor | None,
        mask: Tensor | None, scale: float, lay: WindowLayout, edges: Sequence[int],
    ) -> Tensor:
        keep = None if mask is None else (mask, scale)
        out = add_output_boxes(residual, blocks, left, right, bias, keep, lay, edges)
        ctx.save_for_backward(blocks, left, right, mask)
        ctx.settings = (scale, lay, edges, bias is not None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        blocks, left, right, mask = ctx.saved_tensors
        scale, lay, edges, has_bias = ctx.settings
        need = ctx.needs_input_grad
        bsz, k, q, c = blocks.shape
        left, right = left.view(bsz, k, -1, c), right.view(bsz, k, -1, c)
        dblocks = pool.empty_like(blocks) if need[1] else None
        dleft = pool.empty_like(left) if need[2] else None
        dright = pool.empty_like(right) if need[3] else None
        dbias = blocks.new_zeros(c) if need[4] and has_bias else None
        for i in range(bsz):
            for box in _boxes(lay, edges, c, blocks):
                in_map = mask is not None and _one_run(dout, i, box) and _one_run(mask, i, box)  # (as in the forward)
                g = _box_rows(dout, i, box, edges, in_map)  # (a view of dout in map order: not to be written into)
                if mask is not None:  # (into the gathered copy; out of place on the view of dout)
                    g = _times_mask(g, _box_rows(mask, i, box, edges, in_map), scale, in_place=not in_map)
                if dbias is not None:
                    dbias += g.sum(0)
                g = subblock_view(g, box, edges).reshape(-1, q, c) if in_map else g.view(-1, q, c)
                xb, lb, rb = blocks[i, box.k], left[i, box.k], right[i, box.k]
                if dright is not None:
                    torch.bmm(torch.bmm(xb, lb.transpose(1, 2)).transpose(1, 2), g, out=dright[i, box.k])
                dt = torch.bmm(g, rb.transpose(1, 2))
                if dleft is not None:
                    torch.bmm(dt.transpose(1, 2), xb, out=dleft[i, box.k])
                if dblocks is not None:
                    torch.bmm(dt, lb, out=dblocks[i, box.k])
        flat = (-1, *left.shape[2:])
        return (
            dout if need[0] else None, dblocks, None if dleft is None else dleft.view(flat),
            None if dright is None else dright.view(flat), dbias, None, None, None, None,
        )


def project_subblocks(
    x: Tensor, norm: Norm | None, w: Tensor, b: Tensor | None, lay: WindowLayout, edges: Sequence[int],
    head_dim: int, weights: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`project_boxes` (sub-blocks, Gram matrices, ``v0`` sums), differentiable where autograd records."""
    if norm is not None and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, *norm[:2], w, b)
    ):
        ln_w, ln_b, eps = norm
        return _ProjectSubblocks.apply(x.contiguous(), ln_w, ln_b, w, b, eps, lay, edges, head_dim, weights)
    blocks, grams, per_shift, _, _ = project_boxes(x, norm, w, b, lay, edges, head_dim, weights)
    return blocks, grams, per_shift


def add_subblock_output(
    residual: Tensor, blocks: Tensor, left: Tensor, right: Tensor, bias: Tensor | None, keep: Keep | None,
    lay: WindowLayout, edges: Sequence[int],
) -> Tensor:
    """:func:`add_output_boxes`, differentiable where autograd records."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (residual, blocks, left, right, bias)):
        mask, scale = keep if keep is not None else (None, 1.0)
        return _AddSubblockOutput.apply(residual, blocks, left, right, bias, mask, scale, lay, edges)
    return add_output_boxes(residual, blocks, left, right, bias, keep, lay, edges)
