"""Building blocks of the Factorizer: the NMF mixer, the pre-norm Factorizer block and conv blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorseg.matricize import WindowLayout, WindowMatricize
from factorseg.nmf import NMF, Init, Solver


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def conv_transpose_nd(spatial_dims: int) -> type[nn.Module]:
    return {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]


def instance_norm_nd(spatial_dims: int) -> type[nn.Module]:
    return {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of every voxel of a channels-first map."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class NMFMixer(nn.Module):
    """Context mixing by NMF: in-projection -> ReLU -> matricize -> NMF -> inverse -> out-projection."""

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        head_dim: int = 8,
        window_size: int | Sequence[int] | None = 8,
        shifts: Sequence[int | Sequence[int]] = (0,),
        rank: int = 1,
        num_iters: int = 5,
        solver: Solver = "hals",
        init: Init = "fixed",
        backprop_iters: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.in_proj = conv(channels, channels, 1)
        self.out_proj = conv(channels, channels, 1)
        self.matricize = WindowMatricize(spatial_dims, head_dim, window_size, shifts)
        self.nmf = NMF(head_dim, rank, num_iters, solver, init, backprop_iters, seed)

    def matrices(self, x: Tensor) -> tuple[Tensor, WindowLayout]:
        """The nonnegative window matrices the NMF factorises, and their layout."""
        return self.matricize(torch.relu(self.in_proj(x)))

    def forward(self, x: Tensor) -> Tensor:
        mats, layout = self.matrices(x)
        return self.out_proj(self.matricize.inverse(self.nmf(mats), layout))


class MLP(nn.Module):
    """Per-voxel two-layer MLP (1x1 convolutions) with GELU and dropout."""

    def __init__(self, channels: int, ratio: float, dropout: float, spatial_dims: int) -> None:
        super().__init__()
        conv, hidden = conv_nd(spatial_dims), int(round(channels * ratio))
        self.net = nn.Sequential(
            conv(channels, hidden, 1), nn.GELU(), nn.Dropout(dropout), conv(hidden, channels, 1), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class FactorizerBlock(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, channels: int, spatial_dims: int, mlp_ratio: float, dropout: float, **mixer: object) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.mixer = NMFMixer(channels, spatial_dims, **mixer)  # type: ignore[arg-type]
        self.drop = nn.Dropout(dropout)
        self.norm2 = ChannelLayerNorm(channels)
        self.mlp = MLP(channels, mlp_ratio, dropout, spatial_dims)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.mixer(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class ConvBlock(nn.Module):
    """Two 3x3 conv -> instance norm -> LeakyReLU layers with a residual 1x1 path (the stem)."""

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
        return F.leaky_relu(self.body(x) + self.skip(x), 0.01)


class Downsample(nn.Module):
    """Strided 2x2 convolution halving every spatial size, with channel LayerNorm.

    LayerNorm (not instance norm) so that a 1-voxel bottleneck on small inputs is still valid.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, 2, stride=2)
        self.norm = ChannelLayerNorm(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class Upsample(nn.Module):
    """Transposed 2x2 convolution doubling every spatial size."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.conv = conv_transpose_nd(spatial_dims)(in_channels, out_channels, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class PositionalEmbedding(nn.Module):
    """Learnable additive positional embedding, resized (trilinear) to inputs of other sizes."""

    def __init__(self, channels: int, size: Sequence[int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, *size))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if tuple(w.shape[2:]) != tuple(x.shape[2:]):
            mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2]
            w = F.interpolate(w, size=x.shape[2:], mode=mode, align_corners=False)
        return x + w.to(x.dtype)
