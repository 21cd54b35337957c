"""The Factorizer's network blocks: the pre-norm Factorizer block, the stems, down / up sampling, positional embedding.

The layers they are made of live in :mod:`factorseg.models.layers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorseg.models.layers.conv import channels_last, conv_nd, conv_transpose, conv_transpose_nd, stem_conv
from factorseg.models.layers.dropout import Dropout, keep_mask_like
from factorseg.models.layers.fastpath import can_modify_inplace, traced
from factorseg.models.layers.mixer import NMFMixer
from factorseg.models.layers.mlp import MLP, mlp_residual
from factorseg.models.layers.norm import ChannelLayerNorm, instance_norm, instance_norm_nd


class FactorizerBlock(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``.

    Runs channels-last (LayerNorm over channels and the 1x1 convolutions become plain matrix
    products over voxels) and returns a channels-last tensor (``(B, C, *spatial)`` shape), so that
    a stack of blocks and the model's convolutions never permute between layouts. The block hands the
    mixer its input channels-last, as its own residual, with the dropout mask
    (``mixer(xc, norm=..., add_input=True, keep=..., channels_last=True)``), whose output, as forward hooks see
    it, is then channels-last and includes them (except where the dropout is PyTorch's own).
    """

    def __init__(self, channels: int, spatial_dims: int, mlp_ratio: float, dropout: float, **mixer: Any) -> None:
        """``mixer``: the keyword arguments of :class:`NMFMixer` (window, shifts, NMF settings, path)."""
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.mixer = NMFMixer(channels, spatial_dims, **mixer)
        self.drop = Dropout(dropout)
        self.norm2 = ChannelLayerNorm(channels)
        self.mlp = MLP(channels, mlp_ratio, dropout, spatial_dims)

    def forward(self, x: Tensor) -> Tensor:
        xc = x.movedim(1, -1).contiguous()
        # Out of place: the input may be a skip connection. The mixer normalises (in training it then keeps
        # less for the backward pass), drops out and adds the residual (on the CPU box by box, without
        # writing its own output).
        drop = self.drop
        if not drop.training or drop.p == 0:
            y = self.mixer(xc, norm=self.norm1.norm, add_input=True, channels_last=True)
        elif drop.draws_own_mask(xc):
            # The mask Dropout would draw for the channels-last output, drawn here: the mixer applies it.
            keep = keep_mask_like(xc, drop.p)
            y = self.mixer(xc, norm=self.norm1.norm, add_input=True, keep=keep, channels_last=True)
        else:
            y = xc + drop(self.mixer(xc.movedim(-1, 1), norm=self.norm1.norm).movedim(1, -1))
        if self._diet(y):
            return mlp_residual(y, self.norm2.norm, self.mlp).movedim(-1, 1)
        if can_modify_inplace(y) and y.is_contiguous():  # (add_norm_to_ checks the parameters)
            return self.mlp.add_norm_to_(y, self.norm2.norm).movedim(-1, 1)
        return (y + self.mlp.forward_channels_last(self.norm2.norm(y))).movedim(-1, 1)

    def _diet(self, y: Tensor) -> bool:
        """Whether the MLP branch takes :func:`mlp_residual` (training with autograd, plain float, no capture)."""
        return (
            torch.is_grad_enabled() and y.requires_grad and not traced() and y.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled(y.device.type)
        )


class ConvBlock(nn.Module):
    """Two 3x3 conv -> instance norm -> LeakyReLU layers with a residual 1x1 path (``stem="conv_block"``).

    Runs channels-last in memory (see :func:`channels_last`), as do the blocks that follow it.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        conv, norm = conv_nd(spatial_dims), instance_norm_nd(spatial_dims)
        self.body = nn.Sequential(
            conv(in_channels, out_channels, 3, padding=1),
            norm(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            conv(out_channels, out_channels, 3, padding=1),
            norm(out_channels, affine=True),
        )
        self.skip = conv(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = channels_last(x)
        conv1, norm1, act, conv2, norm2 = self.body
        h = act(instance_norm(stem_conv(conv1, x), norm1))
        h = instance_norm(conv2(h), norm2)
        return F.leaky_relu(h + self.skip(x), 0.01)


class ConvStem(nn.Module):
    """The paper's stem: one bias-free 3x3 convolution (channels-last, see :func:`channels_last`)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return stem_conv(self.conv, channels_last(x))


class Downsample(nn.Module):
    """Strided 2x2 convolution halving every spatial size.

    ``norm=False`` is the paper's bare bias-free convolution; ``norm=True`` adds a bias and a channel
    LayerNorm (LayerNorm, not instance norm, so that a 1-voxel bottleneck on small inputs is valid).
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, norm: bool = False) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, 2, stride=2, bias=norm)
        self.norm = ChannelLayerNorm(out_channels) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class Upsample(nn.Module):
    """Transposed 2x2 convolution doubling every spatial size."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.conv = conv_transpose_nd(spatial_dims)(in_channels, out_channels, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return conv_transpose(self.conv, x)


class PositionalEmbedding(nn.Module):
    """Learnable additive positional embedding (N(0, 1) init, as in the paper), then dropout.

    Sized for the training patch's bottleneck; resized (trilinear) for inputs of other sizes.
    """

    def __init__(self, channels: int, size: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, channels, *size))
        nn.init.normal_(self.weight, std=1.0)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if tuple(w.shape[2:]) != tuple(x.shape[2:]):
            mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2]
            w = F.interpolate(w, size=x.shape[2:], mode=mode, align_corners=False)
        return self.drop(x + w.to(x.dtype))
