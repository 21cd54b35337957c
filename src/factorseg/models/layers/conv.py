"""Convolutions of any spatial rank, channels-last memory, 1x1 convolutions as matrices, the padded-input conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorseg.models.layers.fastpath import traced


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
    out = torch.matmul(pointwise_weight(conv), rows.transpose(1, 2))
    if conv.bias is not None:
        out = out.add_(conv.bias[:, None])  # (the product is not kept for the backward pass)
    return out.view(x.shape[0], -1, *x.shape[2:])


def conv_padded_input(conv: nn.Module, x: Tensor) -> Tensor:
    """``conv(x)`` with the input channels zero-padded to a multiple of 8 (weights padded to match).

    oneDNN has no fast kernel for 3D convolutions on few input channels (4 MRI modalities): padding
    to 8 makes the stem's first convolution about 3x faster; the zeros add nothing to the result.
    Not under graph capture: the ONNX exporter mis-shapes the absent bias of a functional conv.
    """
    c = x.shape[1]
    if x.dim() != 5 or c % 8 == 0 or x.device.type != "cpu" or traced():
        return conv(x)
    extra = -c % 8
    xp = channels_last(F.pad(x, (0, 0) * (x.dim() - 2) + (0, extra)))
    wp = F.pad(conv.weight, (0, 0) * (x.dim() - 2) + (0, extra))
    return F.conv3d(xp, wp, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
