"""MONAI baselines with the same ``in_channels`` / ``out_channels`` interface as the Factorizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks import nets
from torch import nn


def segresnet(in_channels: int, out_channels: int, spatial_dims: int = 3, init_filters: int = 16, **kw: Any) -> nn.Module:
    """MONAI SegResNet (Myronenko 2018); 16 initial filters as in the BraTS setting."""
    return nets.SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                          init_filters=init_filters, **kw)


def swinunetr(in_channels: int, out_channels: int, spatial_dims: int = 3, feature_size: int = 48, **kw: Any) -> nn.Module:
    """MONAI SwinUNETR (Hatamizadeh et al. 2022); inputs must be divisible by 32."""
    return nets.SwinUNETR(in_channels=in_channels, out_channels=out_channels, spatial_dims=spatial_dims,
                          feature_size=feature_size, **kw)


def unetr(in_channels: int, out_channels: int, spatial_dims: int = 3, img_size: int | Sequence[int] = 128,
          **kw: Any) -> nn.Module:
    """MONAI UNETR (Hatamizadeh et al. 2022); fixed to ``img_size`` by its patch embedding."""
    return nets.UNETR(in_channels=in_channels, out_channels=out_channels, img_size=img_size,
                      spatial_dims=spatial_dims, **kw)


def dynunet(in_channels: int, out_channels: int, spatial_dims: int = 3, patch_size: int | Sequence[int] = 128,
            spacing: Sequence[float] | None = None, deep_supervision: bool = False, deep_supr_num: int = 2,
            filters: Sequence[int] | None = None, **kw: Any) -> nn.Module:
    """nnU-Net-style U-Net (MONAI DynUNet) with kernels and strides planned from patch size and spacing.

    Like nnU-Net's planner: halve an axis while it stays >= 8 voxels and its spacing is at most twice
    the finest; use 1-voxel kernels along axes still much coarser than the rest.
    """
    size = [patch_size] * spatial_dims if isinstance(patch_size, int) else list(patch_size)
    spacing = list(spacing) if spacing is not None else [1.0] * spatial_dims
    kernels, strides = [], [[1] * spatial_dims]
    current, spc = list(size), list(spacing)
    while True:
        finest = min(spc)
        stride = [2 if (c // 2 >= 4 and s <= 2 * finest) else 1 for c, s in zip(current, spc)]
        kernels.append([3 if s <= 2 * finest else 1 for s in spc])
        if all(st == 1 for st in stride) or len(strides) >= 6:
            break
        strides.append(stride)
        current = [c // st for c, st in zip(current, stride)]
        spc = [s * st for s, st in zip(spc, stride)]
    kernels = kernels[: len(strides)]
    return nets.DynUNet(spatial_dims, in_channels, out_channels, kernel_size=kernels, strides=strides,
                        upsample_kernel_size=strides[1:], filters=filters, norm_name=("INSTANCE", {"affine": True}),
                        deep_supervision=deep_supervision, deep_supr_num=deep_supr_num, res_block=True, **kw)


def basicunet(in_channels: int, out_channels: int, spatial_dims: int = 3, **kw: Any) -> nn.Module:
    """MONAI BasicUNet: a plain five-level U-Net."""
    return nets.BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kw)
