"""Convolutions of any spatial rank, channels-last memory, 1x1 convolutions as matrices, the stem's conv,
the transposed conv with a fast weight gradient."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from factorseg.models.layers.fastpath import block_rows, linear, traced, unrecorded_eager
from factorseg.models.layers import pool


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
    with its slow reference kernel, after a channels-first copy of the input in both passes.
    """
    rows = x.movedim(1, -1).reshape(x.shape[0], -1, x.shape[1])
    w = pointwise_weight(conv)
    params = (w,) if conv.bias is None else (w, conv.bias)
    cpu32 = rows.dtype == torch.float32 and rows.device.type == "cpu" and rows.is_contiguous()
    if cpu32 and unrecorded_eager(rows, *params):
        # Inference: oneDNN's product per cache-sized row block, transposed into its place. MKL's product of the
        # whole map did not scale to two threads (BraTS preset at 128^3, 32 -> 3 channels: 31.9 against 14.5 ms;
        # benchmarks/results/session31/fuse_and_head.py).
        out = pool.empty((x.shape[0], w.shape[0], rows.shape[1]), rows.dtype, rows.device)
        n = block_rows(max(w.shape[0], x.shape[1]), rows.element_size())
        for item, dst in zip(rows, out):
            for block, part in zip(item.split(n), dst.split(n, dim=1)):
                part.copy_(linear(block, w, conv.bias).t())
        return out.view(x.shape[0], -1, *x.shape[2:])
    out = torch.matmul(w, rows.transpose(1, 2))
    if conv.bias is not None:
        out = out.add_(conv.bias[:, None])  # (the product is not kept for the backward pass)
    return out.view(x.shape[0], -1, *x.shape[2:])


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
    ``conv(x)``.
    """
    if (
        x.device.type != "cpu" or traced() or conv.groups != 1 or any(conv.padding) or any(conv.output_padding)
        or any(d != 1 for d in conv.dilation) or not torch.is_grad_enabled() or torch.is_autocast_enabled("cpu")
    ):
        if weight is None:
            return conv(x)
        fn = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}[x.dim()]
        return fn(x, weight, bias, conv.stride, conv.padding, conv.output_padding, conv.groups, conv.dilation)
    if weight is None:
        weight, bias = conv.weight, conv.bias
    return _ConvTranspose.apply(x, weight, bias, tuple(conv.stride))


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
