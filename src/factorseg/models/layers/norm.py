"""Normalisation: LayerNorm over the channels of a channels-first map, and instance norm computed channels-last."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from factorseg.models.layers.fastpath import can_modify_inplace, linear, traced


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


ROW_SUM_MAX_CHANNELS = 128
"""Widest rows :func:`layer_norm_rows` normalises by row sums; above, PyTorch's kernel is as fast or faster."""


def layer_norm_rows(x: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``native_layer_norm(x, [C], None, None, eps)`` of rows ``x (V, C)``: the normalised rows (no affine map:
    callers fold it into the next product, :func:`fold_norm`) and the mean and inverse deviation ``(V, 1)``.

    PyTorch's CPU kernel reduces row by row, which over few channels costs more than the data: 0.8-1.3 ns
    an element over 16-32 channels. For float32 CPU rows of at most :data:`ROW_SUM_MAX_CHANNELS` channels that
    autograd does not record, the two row sums (of ``x`` and of the squared centred rows: the variance of
    centred values, no cancellation) are one-column matrix products (oneDNN's, which also run on two
    threads) up to :data:`ROW_PRODUCT_MAX_CHANNELS`, PyTorch's reduction above, and the rest three elementwise
    passes (over 16-128 channels, before the reduction was used over 64-128): 2.3-2.5 / 1.7-1.8 / 1.15-1.25 /
    1.1x faster over 16 / 32 / 64 / 128 channels on one thread, 2.0-2.3 / 1.4-1.7 / 1.0-1.2 / 0.97-1.05x on two
    (four runs); over 256 as fast as PyTorch's kernel, which is used there, given a weight of ones: without a
    weight it takes a path 1.2-2x slower (``benchmarks/results/session30/layer_norm_rows.py``).
    """
    c = x.shape[-1]
    if not (
        x.dim() == 2 and 0 < c <= ROW_SUM_MAX_CHANNELS and x.dtype == torch.float32 and x.device.type == "cpu"
        and not traced() and can_modify_inplace(x)
    ):
        # A weight of ones: PyTorch's kernel without one takes a slower path.
        return torch.ops.aten.native_layer_norm(x, [c], x.new_ones(c), None, eps)
    mean_of = None if c > ROW_PRODUCT_MAX_CHANNELS else x.new_full((1, c), 1.0 / c)
    mean = _row_means(x, mean_of)
    centred = x - mean
    rstd = _row_means(centred * centred, mean_of).add_(eps).rsqrt_()
    return centred.mul_(rstd), mean, rstd


ROW_PRODUCT_MAX_CHANNELS = 32
"""Widest rows whose means :func:`layer_norm_rows` takes by a one-column product; wider rows are summed by
PyTorch's reduction, there the faster: 0.83-1.00x the product's time over 64 channels, 0.76-0.91x over 128, on
one and two threads, two runs, against 0.97-1.17x over 32 and 1.27-1.40x over 16
(``benchmarks/results/session32/layer_norm_rows.py``)."""


def _row_means(x: Tensor, mean_of: Tensor | None) -> Tensor:
    """The mean of each row of float32 CPU rows ``x (V, C)``, ``(V, 1)``: the product with ``mean_of`` (a ``(1, C)``
    row of ``1 / C``), or without one PyTorch's reduction."""
    if mean_of is None:
        return x.sum(-1, keepdim=True).mul_(1.0 / x.shape[-1])
    return linear(x, mean_of)


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
