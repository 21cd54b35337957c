"""Normalisation: LayerNorm over the channels of a channels-first map, and instance norm computed channels-last."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from factorseg.models.layers.fastpath import can_modify_inplace


def instance_norm_nd(spatial_dims: int) -> type[nn.Module]:
    return {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of every voxel of a channels-first map."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def instance_norm(x: Tensor, norm: nn.Module) -> Tensor:
    """``norm`` (an ``InstanceNorm`` without running stats) computed channels-last.

    PyTorch's instance norm returns channels-first memory (sending the next convolution down a
    slower path) and its variance kernel is slow over the voxel axis. Here: the mean by a plain sum,
    the variance of the centred values by one ``(V x C)^T (V x C)`` product (diagonal), then one
    fused scale-and-shift. Two passes over centred data, so no cancellation.
    """
    if x.dim() not in (4, 5) or norm.track_running_stats:
        return norm(x)
    b, c = x.shape[:2]
    flat = x.movedim(1, -1).reshape(b, -1, c)
    count = flat.shape[1]
    centred = flat - flat.sum(dim=1, keepdim=True) / count
    var = torch.bmm(centred.transpose(1, 2), centred).diagonal(dim1=1, dim2=2).unsqueeze(1) / count
    scale = torch.rsqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
        out = torch.addcmul(norm.bias, centred, scale)
    else:
        out = centred.mul_(scale) if can_modify_inplace(centred) else centred * scale
    return out.view(b, *x.shape[2:], c).movedim(-1, 1)


def normalized(x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """``(x - mean) rstd``: a LayerNorm's output before its affine map, from its saved statistics
    (``native_layer_norm``'s ``mean``, ``rstd``), for the backward passes that recompute a normalisation
    instead of keeping it. Two elementwise passes: faster on the CPU than a second ``native_layer_norm``
    over 16-32 channels, whose per-row reduction dominates."""
    return (x - mean).mul_(rstd)


def fold_norm(
    w: Tensor, b: Tensor | None, ln_w: Tensor | None, ln_b: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """``W'``, ``b'`` with ``linear(LN(x), W, b) = linear(normalized(x), W', b')``: the LayerNorm's affine
    map (weight ``ln_w``, bias ``ln_b``) folded into the linear layer after it."""
    wf = w if ln_w is None else w * ln_w
    if ln_b is None:
        return wf, b
    bf = w @ ln_b
    return wf, bf if b is None else bf.add_(b)


def norm_linear_grads(
    a: Tensor, db: Tensor, w: Tensor, ln_w: Tensor | None, ln_b: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The gradients of ``W`` and of the LayerNorm's weight and bias in ``h = linear(LN(x), W, b)``, from
    two sums over the rows: ``a = sum dh^T xhat`` (``xhat`` the :func:`normalized` rows) and ``db = sum dh``.

    With ``LN(x) = xhat g + beta``: ``dW = a diag(g) + db beta^T``, ``dg = colsum(W * a)``, ``dbeta = db W``.
    A backward pass over row blocks then accumulates one matrix product per block and no per-block
    reduction for the LayerNorm's parameters: PyTorch's (``native_layer_norm_backward`` with the
    parameters' gradients) takes 1.4-1.5x the time of the input's gradient alone over 16-32 K rows of 32
    channels (``benchmarks/results/session28/ln_backward.py``).
    """
    dw = a if ln_w is None else a * ln_w
    if ln_b is not None:
        dw = dw.addr(db, ln_b)
    dlw = None if ln_w is None else (w * a).sum(0)
    dlb = None if ln_b is None else db @ w
    return dw, dlw, dlb
