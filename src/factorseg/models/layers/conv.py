"""Convolutions of any spatial rank, channels-last memory, 1x1 convolutions as matrices, the stem's conv,
the transposed conv with a fast weight gradient."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from factorseg.models.layers import pool
from factorseg.models.layers.fastpath import (
    add_row_products_, block_rows, can_modify_inplace, linear, row_blocks, traced, unrecorded_eager,
)


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def conv_transpose_nd(spatial_dims: int) -> type[nn.Module]:
    return {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]


def channels_last(x: Tensor) -> Tensor:
    """``x`` with channels-last memory (what oneDNN convolutions and the Factorizer blocks run fastest on)."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return x if fmt is None else x.contiguous(memory_format=fmt)


def pointwise_weight(conv: nn.Module) -> Tensor:
    """The ``(out, in)`` matrix of a 1x1 convolution, applied to channels-last data with ``F.linear``."""
    return conv.weight.flatten(1)


def pointwise_to_channels_first(conv: nn.Module, x: Tensor) -> Tensor:
    """``conv(x)`` for a 1x1 convolution with few outputs (a segmentation head), as one product per batch item.

    ``W (out, C) @ rows^T``, where ``rows (V, C)`` is channels-last ``x`` viewed per voxel, gives the output
    contiguous channels-first: PyTorch would otherwise run such a convolution on the channels-last map
    with its slow reference kernel, after a channels-first copy of the input in both passes. Float32 CPU maps
    take oneDNN's product per cache-sized row block, also under autograd (:class:`_PointwiseToChannelsFirst`).
    """
    rows = x.movedim(1, -1).reshape(x.shape[0], -1, x.shape[1])
    w = pointwise_weight(conv)
    params = (w,) if conv.bias is None else (w, conv.bias)
    cpu32 = rows.dtype == torch.float32 and rows.device.type == "cpu" and rows.is_contiguous()
    if cpu32 and unrecorded_eager(rows, *params):
        return _channels_first_products(rows, w, conv.bias).view(x.shape[0], -1, *x.shape[2:])
    if cpu32 and not traced() and not torch.is_autocast_enabled("cpu") and w.dtype == torch.float32:
        return _PointwiseToChannelsFirst.apply(x, w, conv.bias)
    out = torch.matmul(w, rows.transpose(1, 2))
    if conv.bias is not None:
        out = out.add_(conv.bias[:, None])  # (the product is not kept for the backward pass)
    return out.view(x.shape[0], -1, *x.shape[2:])


def _channels_first_products(rows: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``(w rows_i^T + b)`` for each item's rows ``(B, V, C)``: ``(B, N, V)``, oneDNN's product per cache-sized row
    block transposed into its place. (MKL's product of the whole map did not scale to two threads: BraTS preset at
    128^3, 32 -> 3 channels, 31.9 against 14.5 ms; ``benchmarks/results/session31/fuse_and_head.py``.) Not from the
    layers' pool: a head's output is the model's, which its caller may keep for as long as it likes."""
    out = torch.empty((rows.shape[0], w.shape[0], rows.shape[1]), dtype=rows.dtype, device=rows.device)
    n = block_rows(max(w.shape), rows.element_size())
    for item, dst in zip(rows, out):
        for block, part in zip(item.split(n), dst.split(n, dim=1)):
            part.copy_(linear(block, w, b).t())
    return out


class _PointwiseToChannelsFirst(torch.autograd.Function):
    """:func:`pointwise_to_channels_first` under autograd for float32 CPU maps ``x (B, C, *s)`` in channels-last
    memory: the forward pass as without autograd; ``x``'s gradient a new channels-last map, not a view (a decoder
    map read by a deep-supervision head and by the next up-sampling: autograd then adds the other gradient into it
    in place), and the weight's over voxels on every thread (:func:`add_row_products_`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        rows = x.movedim(1, -1).reshape(x.shape[0], -1, x.shape[1])
        ctx.save_for_backward(rows, w)
        ctx.has_bias, ctx.shape = b is not None, x.shape
        return _channels_first_products(rows, w, b).view(x.shape[0], -1, *x.shape[2:])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        rows, w = ctx.saved_tensors
        g = grad.reshape(grad.shape[0], grad.shape[1], -1)  # (B, N, V)
        need = ctx.needs_input_grad
        dx = dw = None
        if need[0]:
            shape = ctx.shape  # channels-last strides for it, from a meta tensor
            strides = torch.empty(shape[0], *shape[2:], shape[1], device="meta").movedim(-1, 1).stride()
            dx = pool.empty_strided(shape, strides, rows.dtype, rows.device)
            n = block_rows(max(w.shape), rows.element_size())
            for gi, di in zip(g, dx.movedim(1, -1).view(rows.shape)):
                for src, dst in zip(gi.split(n, dim=1), di.split(n)):
                    torch.mm(src.t(), w, out=dst)
        if need[1]:
            dw = torch.zeros_like(w)
            for gi, ri in zip(g, rows):
                add_row_products_(dw, gi.t(), ri)  # (no transposed copy: benchmarks/results/session34/head_backward.py)
        db = g.sum(dim=(0, 2)) if ctx.has_bias and need[2] else None
        return dx, dw, db


def add_pointwise(out: Tensor, x: Tensor, w: Tensor) -> Tensor:
    """``out + conv1x1(x)`` for maps ``out (B, N, *s)`` and ``x (B, C, *s)``, ``w (N, C)``: channels-last, in ``out``'s
    memory where it may be (a decoder's skip connection added to its up-sampled map).

    On the CPU the product runs per cache-sized row block through :func:`linear` and is added in place: no
    map-sized product (1.2-1.4x faster than ``addmm_`` without autograd, ``benchmarks/results/session31/fuse_and_head.py``).
    Under autograd :class:`_AddPointwise` does the same where ``out`` is a channels-last float32 map of its own
    (not a view or a leaf) and ``x`` channels-last. Elsewhere ``addmm_`` in place (graph capture) or
    oneDNN's product, then the sum.
    """
    rows, x_rows = _rows(out), _rows(x)
    if rows.device.type == "cpu" and unrecorded_eager(rows, x_rows, w):
        _add_products_(rows, x_rows, w.contiguous())
    elif can_modify_inplace(rows, x_rows, w):  # (graph capture: no data-dependent split)
        rows = rows.addmm_(x_rows, w.t())
    elif _records_in_place(out, x, w):
        return _AddPointwise.apply(out, x, w.contiguous())
    else:  # (oneDNN's product, then the sum in place: 1.3-1.6x faster than torch.addmm)
        rows = linear(x_rows, w).add_(rows)
    return rows.view(out.shape[0], *out.shape[2:], out.shape[1]).movedim(-1, 1)


def _rows(t: Tensor) -> Tensor:
    """A map ``(B, C, *s)`` as rows of voxels ``(B * prod(s), C)`` (a view of channels-last memory)."""
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def _add_products_(rows: Tensor, x_rows: Tensor, w: Tensor) -> None:
    """``rows += x_rows w^T`` one cache-sized row block at a time."""
    width = max(w.shape)
    for dst, src in zip(row_blocks(rows, width), row_blocks(x_rows, width)):
        dst.add_(linear(src, w))


def _records_in_place(out: Tensor, x: Tensor, w: Tensor) -> bool:
    """Whether :class:`_AddPointwise` takes :func:`add_pointwise` under autograd."""
    return (
        out.device.type == "cpu" and not traced() and not torch.is_autocast_enabled("cpu")
        and all(t.dtype == torch.float32 and t.device == out.device for t in (out, x, w))
        and out._base is None and out.grad_fn is not None and out.movedim(1, -1).is_contiguous()
        and x.movedim(1, -1).is_contiguous()
    )


class _AddPointwise(torch.autograd.Function):
    """:func:`add_pointwise` under autograd, in ``out``'s memory. ``out``'s gradient is the output's. ``x``'s is a new
    map in ``x``'s layout, not a view: where ``x`` has another use (a skip connection is also down-sampled), its
    gradient arrives there first, and autograd then adds the other one into it in place, where it would sum two
    views into a new map (autograd only takes over a first-arriving gradient that shares its memory with
    nothing; a 500 MiB map at 160^3). Saves ``x`` (the down-sampling keeps it anyway), not the product."""

    @staticmethod
    def forward(ctx: Any, out: Tensor, x: Tensor, w: Tensor) -> Tensor:
        _add_products_(_rows(out), _rows(x), w)
        ctx.mark_dirty(out)
        ctx.save_for_backward(x, w)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, w = ctx.saved_tensors
        g = _rows(channels_last(grad))
        dx = dw = None
        if ctx.needs_input_grad[1]:
            dx = pool.empty_like(x)
            wt, width = w.t().contiguous(), max(w.shape)
            for dst, src in zip(row_blocks(_rows(dx), width), row_blocks(g, width)):
                dst.copy_(linear(src, wt))
        if ctx.needs_input_grad[2]:
            dw = add_row_products_(torch.zeros_like(w), g, _rows(x))
        return grad if ctx.needs_input_grad[0] else None, dx, dw


def stem_conv(conv: nn.Module, x: Tensor) -> Tensor:
    """``conv(x)`` for a network's first convolution (few input channels), its output channels-last on the CPU.

    oneDNN returns the output channels-first for a one-channel input; the blocks after the stem need it
    channels-last. Float32 CPU inputs always take oneDNN's convolution (``torch.mkldnn_convolution``), the
    kernel PyTorch itself picks at the recipes' shapes (the same bits there), but not for batch-1 inputs whose
    batch x channels x depth x height is at most 20,480, which its heuristic sends to a reference kernel 3-11x
    slower (4 channels at 64^3, channels-last: 89.2 against 8.1 ms on one thread, 74.3 against 14.3 on two;
    ``benchmarks/results/session32/stem_onednn.py``). The kernel depends on nothing but the settings: the same
    bits in every process. (Until 2026-12-07 a one-off timing per input shape could pick a kernel on inputs
    zero-padded to 8 channels, so about one run in 20 trained other weights from the same seed;
    docs/performance.md, "2026-12-07 (sixth session)".) Elsewhere (other dtypes or devices, autocast, capture,
    padding other than zeros or given as a string, oneDNN disabled) ``conv(x)``.
    """
    if x.device.type != "cpu" or traced():
        return conv(x)
    onednn = (
        torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
        and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
    )
    if not onednn:
        return channels_last(conv(x))
    return channels_last(torch.mkldnn_convolution(
        x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups
    ))


def conv_transpose(conv: nn.Module, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """``conv(x)`` for a transposed convolution, whose weight gradient on the CPU comes from the adjoint convolution.

    ``weight`` (with ``bias``, ``None`` for none) replaces the module's own: ``conv``'s settings (stride,
    padding, ...) with other weights, such as ``conv``'s composed with a 1x1 convolution after it.

    oneDNN's own weight gradient of a strided 3D transposed convolution is slow on channels-last maps
    (BraTS preset at 128^3, 64 -> 32 channels, kernel and stride 2: 0.73 s); it equals the weight
    gradient of the ordinary convolution that maps the output gradient back to the input's shape
    (``dW = sum z (x) patches(dy)``), which oneDNN computes in 0.17 s, bit for bit the same. Other devices,
    padding, dilation, groups, autocast (whose casts the saved tensors would not have) or graph capture:
    ``conv(x)``. On the CPU the output is channels-last, like the blocks' maps: PyTorch returns small maps
    channels-first.
    """
    if (
        x.device.type != "cpu" or traced() or conv.groups != 1 or any(conv.padding) or any(conv.output_padding)
        or any(d != 1 for d in conv.dilation) or not torch.is_grad_enabled() or torch.is_autocast_enabled("cpu")
    ):
        if weight is None:
            out = conv(x)
        else:
            fn = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}[x.dim()]
            out = fn(x, weight, bias, conv.stride, conv.padding, conv.output_padding, conv.groups, conv.dilation)
    else:
        if weight is None:
            weight, bias = conv.weight, conv.bias
        out = _ConvTranspose.apply(x, weight, bias, tuple(conv.stride))
    return channels_last(out) if out.device.type == "cpu" else out


class _ConvTranspose(torch.autograd.Function):
    """A transposed convolution (no padding, dilation 1, one group) with the adjoint convolution's weight gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        fn = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}[x.dim()]
        return fn(x, weight, bias, stride)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        nd = x.dim() - 2
        zeros = [0] * nd
        conv = torch.ops.aten.convolution_backward
        dx = dw = db = None
        if need_x:
            dx = conv(grad, x, weight, None, ctx.stride, zeros, [1] * nd, True, zeros, 1, [True, False, False])[0]
        if need_w:  # the weight gradient of conv(grad) -> x-shaped output, with x as that output's gradient
            dw = conv(x, grad, weight, None, ctx.stride, zeros, [1] * nd, False, zeros, 1, [False, True, False])[1]
        if need_b and ctx.has_bias:
            db = grad.sum(dim=[0, *range(2, grad.dim())])
        return dx, dw, db, None
