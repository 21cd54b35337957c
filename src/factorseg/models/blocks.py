"""Building blocks of the Factorizer: the NMF mixer, the pre-norm Factorizer block and conv blocks."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from factorseg.models.layers.windows import (
    WindowLayout,
    WindowMatricize,
    crop_channels_last,
    from_subblocks,
    matrices_view,
    pad_channels_last,
    shift_window_sums,
    subblock_edges,
    subblock_sums,
    subblock_weights,
    to_subblocks,
    window_stack,
    window_sums,
    window_unstack,
)
from factorseg.models.layers.nmf import NMF, Init, Solver, gram_pair, grams_in_range, head_loadings_t, traced


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


class Dropout(nn.Dropout):
    """``nn.Dropout`` with CPU masks from 64-bit random words (forward + backward 2x faster on the CPU).

    On the CPU, PyTorch draws dropout masks at about 100 million per second (one generator call and
    a float comparison per element), which made dropout the largest single cost of a Factorizer
    training step at full resolution (three masks per block, over 250 million numbers at 128^3).
    Here one 64-bit draw of PyTorch's default generator (so ``torch.manual_seed`` makes it
    reproducible) gives four uniform 16-bit numbers (masks 5x faster to draw than ``bernoulli_``), an
    element is kept when its number is at least ``round(p 2^16)`` (in 16-bit two's complement), and
    kept values are scaled by the inverse of the exact keep probability (``p`` is rounded to a
    multiple of ``2^-16``). Other devices, in-place use and graph capture use ``F.dropout``. Same
    state dict as ``nn.Dropout``. Forward + backward timing: ``benchmarks/dropout.py``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0 or self.inplace or x.device.type != "cpu" or traced():
            return super().forward(x)
        if self.p == 1:
            return x * 0.0
        keep, scale = keep_mask(x.shape, self.p, x.device)
        return _KeepScale.apply(x, keep, scale)


def keep_mask(
    shape: Sequence[int], p: float, device: torch.device, generator: torch.Generator | None = None
) -> tuple[Tensor, float]:
    """A dropout keep-mask (``bool``) of ``shape`` and the scale of kept values, for ``0 < p < 1``.

    CPU: from 64-bit random words (see :class:`Dropout`; ``p`` rounded to a multiple of ``2^-16``);
    other devices: ``bernoulli_``. ``generator`` (on ``device``) makes the mask reproducible.
    """
    n = math.prod(shape)
    if device.type == "cpu":
        threshold = round(p * 65536)
        words = torch.empty(-(-n // 4), dtype=torch.int64).random_(-(2**63), None, generator=generator)
        return (words.view(torch.int16)[:n] >= threshold - 32768).view(*shape), 65536 / (65536 - threshold)
    keep = torch.empty(*shape, device=device).bernoulli_(1.0 - p, generator=generator).bool()
    return keep, 1.0 / (1.0 - p)


class _KeepScale(torch.autograd.Function):
    """``where(keep, x, 0) * scale``, saving only the boolean mask (a quarter of a float mask)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, x.new_zeros(())).mul_(scale)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, grad.new_zeros(())).mul_(ctx.scale), None, None


def _can_modify_inplace(*tensors: Tensor) -> bool:
    """In-place updates are safe where autograd records nothing for these tensors."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _pointwise_weight(conv: nn.Module) -> Tensor:
    """The ``(out, in)`` matrix of a 1x1 convolution, applied to channels-last data with ``F.linear``."""
    return conv.weight.flatten(1)


class NMFMixer(nn.Module):
    """Context mixing by NMF: in-projection -> ReLU -> matricize -> NMF -> inverse -> out-projection.

    Runs channels-last: the in-projection is one matrix product over all voxels, and the
    out-projection, its bias and the average over shifts are folded into the reconstruction
    (``W_out U V^T`` becomes ``V (U^T W_out^T)``). Two equivalent ways to the same values:

    * Sub-block path (rank-1 HALS, fixed or random init; the presets): the map is laid out
      sub-block-major once (:func:`factorseg.models.layers.windows.to_subblocks`); one product gives every
      sub-block's Gram blocks, which add up to every window's of every shift; the NMF iterates on
      those ``head_dim x head_dim`` matrices (:meth:`factorseg.models.layers.nmf.NMF.solve_grams`). Since ``v = a
      X^T u``, the reconstruction of a voxel is a linear map of its own features, ``x^T (sum_h a_h u_h
      u_h^T W_out^T) / S`` per window; the maps of the windows of all shifts that contain a sub-block
      are added, and one product per sub-block gives the output. No window of any shift is ever
      gathered, and ``v`` is never formed.
    * Window path (other solvers and inits, ranks > 1, huge values, export tracing): the windows of
      all shifts are gathered into a window-major buffer (:func:`factorseg.models.layers.windows.window_stack`),
      ``nmf.decompose`` factorises its ``(B, S, H, W, head_dim, N)`` matrices (a strided view, the
      values :meth:`matrices` returns), and the reconstruction is scattered back.

    Inputs may be channels-first or channels-last in memory; the output is channels-last in memory.
    """

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
        init: Init | None = None,
        backprop_iters: int | None = None,
        seed: int = 0,
        in_bias: bool = False,
        eps: float | None = None,
    ) -> None:
        super().__init__()
        if init is None:  # the paper's; global windows have no fixed size for a v0
            init = "fixed_u" if window_size is None else "fixed_uv"
        conv = conv_nd(spatial_dims)
        self.in_proj = conv(channels, channels, 1, bias=in_bias)
        self.out_proj = conv(channels, channels, 1)
        self.matricize = WindowMatricize(spatial_dims, head_dim, window_size, shifts, positional=init == "fixed_uv")
        self.nmf = NMF(head_dim, rank, num_iters, solver, init, backprop_iters, seed, self.matricize.window_size, eps)
        #: Take the sub-block path where it applies; ``False`` forces the window path.
        self.subblocks = True

    def matrices(self, x: Tensor) -> tuple[Tensor, WindowLayout]:
        """The nonnegative window matrices the NMF factorises, and their layout."""
        return self.matricize(torch.relu(self.in_proj(x)))

    def forward(self, x: Tensor) -> Tensor:
        self.matricize._check(x)
        lay = self.matricize.layout(x.shape[2:])
        h = F.linear(x.movedim(1, -1), _pointwise_weight(self.in_proj), self.in_proj.bias)
        h = pad_channels_last(torch.relu_(h), lay)  # relu_ is safe: the linear's backward does not need its output
        edges = subblock_edges(lay)
        out = self._subblock_path(h, lay, edges) if self._use_subblocks(h, edges) else None
        if out is None:
            out = self._window_path(h, lay)
        return crop_channels_last(out, lay).movedim(-1, 1)

    def _use_subblocks(self, h: Tensor, edges: Sequence[int]) -> bool:
        """Whether the sub-block path applies to the in-projected features ``h (B, *padded, C)``.

        Not for half precision (autocast): the window path factorises in float32. Per sub-block a C x C
        map is formed: worthwhile while it is not much larger than the sub-block.
        """
        return (
            self.subblocks and self.nmf.fusable and not traced()
            and h.shape[-1] <= 4 * math.prod(edges) and h.dtype in (torch.float32, torch.float64)
        )

    def _subblock_path(self, h: Tensor, lay: WindowLayout, edges: Sequence[int]) -> Tensor | None:
        """Output ``(B, *padded, C)`` by the sub-block path, or ``None`` where the window path must run."""
        b, c = h.shape[0], h.shape[-1]
        blocks = to_subblocks(h, lay, edges)  # (B, K, Q, C)
        g_sub, g_sub_left = gram_pair(matrices_view(blocks.unsqueeze(1), self.matricize.head_dim))  # (B, 1, H, K, M, M)
        # Per sub-block (K) -> per window of each shift (S, W): (B, H, S, W, M, M) -> (B, S, H, W, M, M).
        g = window_sums(g_sub[:, 0], lay, edges, dim=2).transpose(1, 2)
        if not grams_in_range(g):
            return None
        if self.nmf.needs_left_gram and g_sub_left is not g_sub:
            g_left = window_sums(g_sub_left[:, 0], lay, edges, dim=2).transpose(1, 2)
        else:
            g_left = g
        eps = self.nmf.eps_for(h.dtype)
        start = None
        if self.nmf.init == "fixed_uv":
            v0 = self.nmf.initial_v(lay.window).to(h.dtype)
            start = self.nmf.first_u(self._times_v0(blocks, v0, lay, edges), v0, eps)
        u, a = self.nmf.solve_grams(g, g_left, eps, start)  # (B, S, H, W, M, 1), (B, S, H, W)
        s = len(lay.shifts)
        w_out = _pointwise_weight(self.out_proj)
        left = head_loadings_t(u * a[..., None, None])  # (B S W, H, C): rows a_h u_h^T
        right = head_loadings_t(u) @ (w_out.t() / s)  # (B S W, H, C): rows u_h^T W_out^T / S
        per_window = (left.transpose(1, 2) @ right).view(b, s, lay.num_windows, c, c)
        per_block = subblock_sums(per_window, lay, edges)  # (B, K, C, C)
        rec = torch.bmm(blocks.reshape(-1, *blocks.shape[2:]), per_block.view(-1, c, c))
        if self.out_proj.bias is not None:  # the shift average of a constant: the bias once
            rec = rec.add_(self.out_proj.bias)
        return from_subblocks(rec.view(blocks.shape), lay, edges)

    def _times_v0(self, blocks: Tensor, v0: Tensor, lay: WindowLayout, edges: Sequence[int]) -> Tensor:
        """``X v0`` of every window of every shift, ``(B, S, H, W, M, 1)``, from sub-blocks ``(B, K, Q, C)``.

        ``v0`` weights each voxel by its position in its window: a sub-block's voxels get the ``v0``
        entries of the slot the sub-block fills in its window of each shift, so per shift one weighted
        sum per sub-block, then the per-window sums (no window is gathered).
        """
        b, c = blocks.shape[0], blocks.shape[-1]
        weights = subblock_weights(v0[:, 0], lay, edges)  # (S, K, Q)
        per_block = torch.einsum("skq,bkqc->bskc", weights, blocks)
        per_window = shift_window_sums(per_block, lay, edges)  # (B, S, W, C)
        m = self.matricize.head_dim
        return per_window.view(b, len(lay.shifts), lay.num_windows, c // m, m).transpose(2, 3).unsqueeze(-1)

    def _window_path(self, h: Tensor, lay: WindowLayout) -> Tensor:
        """Output ``(B, *padded, C)`` through the gathered windows and ``nmf.decompose``."""
        b, c = h.shape[0], h.shape[-1]
        heads = c // self.matricize.head_dim
        stacked = window_stack(h, lay)  # (B, S, W, N, C)
        mats = matrices_view(stacked, self.matricize.head_dim)
        u, v = self.nmf.decompose(mats, nonnegative=True, column_shape=lay.window)
        s, w, n, r = len(lay.shifts), lay.num_windows, lay.window_voxels, u.shape[-1]
        # V per window and all heads: (B S W, N, H R) (a view for the fused path); the loadings as
        # block-diagonal (B S W, H R, C) rows, with the out-projection and the shift average folded in.
        v_all = v.permute(0, 1, 3, 4, 2, 5).reshape(b * s * w, n, heads * r)
        w_out = _pointwise_weight(self.out_proj).to(u.dtype)
        mixed = head_loadings_t(u) @ (w_out.t() / s)
        out = window_unstack(torch.bmm(v_all, mixed).view(b, s, w, n, c), lay)
        # The bias once per voxel (the shift average of a constant), not broadcast into every window row.
        if self.out_proj.bias is None:
            return out
        bias = self.out_proj.bias.to(out.dtype)
        return out.add_(bias) if _can_modify_inplace(out) else out + bias


@contextlib.contextmanager
def window_path(model: nn.Module) -> Iterator[nn.Module]:
    """Within this context every :class:`NMFMixer` of ``model`` takes the window path."""
    mixers = [m for m in model.modules() if isinstance(m, NMFMixer)]
    previous = [m.subblocks for m in mixers]
    for m in mixers:
        m.subblocks = False
    try:
        yield model
    finally:
        for m, flag in zip(mixers, previous):
            m.subblocks = flag


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
        h = F.linear(x, _pointwise_weight(first), first.bias)
        if _can_modify_inplace(h):
            h = torch.ops.aten.gelu_(h, approximate=act.approximate)
        else:
            h = F.gelu(h, approximate=act.approximate)
        return drop2(F.linear(drop1(h), _pointwise_weight(second), second.bias))

    def add_to_(self, y: Tensor, x: Tensor) -> Tensor:
        """``y += mlp(x)`` in place on channels-last ``(B, *spatial, C)`` tensors, for inference.

        The second product accumulates straight into ``y`` (no separate output and sum).
        """
        first, act, drop1, second, drop2 = self.net
        h = torch.ops.aten.gelu_(F.linear(x, _pointwise_weight(first), first.bias), approximate=act.approximate)
        h = drop1(h)
        if (drop2.p > 0 and drop2.training) or h.dtype != y.dtype or second.weight.dtype != y.dtype:
            # Dropout or autocast (e.g. bf16 products): no fused accumulation.
            return y.add_(drop2(F.linear(h, _pointwise_weight(second), second.bias)))
        c = y.shape[-1]
        y2d = y.view(-1, c)
        y2d.addmm_(h.view(-1, h.shape[-1]), _pointwise_weight(second).t())
        if second.bias is not None:
            y2d.add_(second.bias)
        return y


class _MLPResidual(torch.autograd.Function):
    """``y + drop(W2 drop(gelu(W1 LN(y) + b1)) + b2)`` on channels-last rows ``(V, C)``, saving little.

    The plain formulation keeps, per voxel, the LayerNorm input and output, the GELU input and output,
    the LayerNorm statistics and both dropout masks: about 6.75 C values' worth. This function keeps
    the input ``y``, the LayerNorm statistics, the GELU input ``h`` and the (boolean) masks, 3.75 C,
    and recomputes the cheap per-voxel rest in the backward pass: the normalisation and the GELU. No
    matrix product is recomputed. Same values and gradients as the plain formulation
    (tests/test_memory_diet.py).
    """

    @staticmethod
    def forward(
        ctx: Any, rows: Tensor, ln_w: Tensor | None, ln_b: Tensor | None, w1: Tensor, b1: Tensor | None,
        w2: Tensor, b2: Tensor | None, eps: float, approximate: str,
        keep: tuple[tuple[Tensor, float], tuple[Tensor, float]] | None,
    ) -> Tensor:
        c = rows.shape[-1]
        normed, mean, rstd = torch.ops.aten.native_layer_norm(rows, [c], ln_w, ln_b, eps)
        h = F.linear(normed, w1, b1)
        del normed
        keep1, keep2 = keep if keep is not None else (None, None)
        z = F.linear(_masked(F.gelu(h, approximate=approximate), keep1), w2, b2)
        masks = [] if keep is None else [keep1[0], keep2[0]]
        ctx.save_for_backward(rows, mean, rstd, h, ln_w, ln_b, w1, b1, w2, *masks)
        ctx.settings = (eps, approximate, None if keep is None else (keep1[1], keep2[1]))
        return rows + _masked(z, keep2)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        rows, mean, rstd, h, ln_w, ln_b, w1, b1, w2, *masks = ctx.saved_tensors
        eps, approximate, scales = ctx.settings
        keep1, keep2 = ((masks[0], scales[0]), (masks[1], scales[1])) if scales is not None else (None, None)
        c = rows.shape[-1]
        need = ctx.needs_input_grad
        dz = _masked(dout, keep2)
        g = _masked(F.gelu(h, approximate=approximate), keep1)
        dw2 = dz.t() @ g if need[5] else None
        db2 = dz.sum(0) if need[6] else None
        del g
        dh = torch.ops.aten.gelu_backward(_masked(dz @ w2, keep1), h, approximate=approximate)
        normed = torch.ops.aten.native_layer_norm(rows, [c], ln_w, ln_b, eps)[0]
        dw1 = dh.t() @ normed if need[3] else None
        db1 = dh.sum(0) if need[4] else None
        del normed
        dn = dh @ w1
        del dh
        mask = [need[0], ln_w is not None and need[1], ln_b is not None and need[2]]
        dy, dlw, dlb = torch.ops.aten.native_layer_norm_backward(dn, rows, [c], mean, rstd, ln_w, ln_b, mask)
        dy = dout + dy if dy is not None else None
        return dy, dlw, dlb, dw1, db1, dw2, db2, None, None, None


def _masked(x: Tensor, keep: tuple[Tensor, float] | None) -> Tensor:
    """``where(keep, x, 0) * scale`` (dropout with a given mask), or ``x`` without one."""
    if keep is None:
        return x
    return torch.where(keep[0], x, x.new_zeros(())).mul_(keep[1])


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
    out = _MLPResidual.apply(
        rows, norm.weight, norm.bias, _pointwise_weight(first), first.bias, _pointwise_weight(second),
        second.bias, norm.eps, act.approximate, keep,
    )
    return out.view(y.shape)


class FactorizerBlock(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``.

    Runs channels-last (LayerNorm over channels and the 1x1 convolutions become plain matrix
    products over voxels) and returns a channels-last tensor (``(B, C, *spatial)`` shape), so that
    a stack of blocks and the model's convolutions never permute between layouts.
    """

    def __init__(self, channels: int, spatial_dims: int, mlp_ratio: float, dropout: float, **mixer: object) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.mixer = NMFMixer(channels, spatial_dims, **mixer)  # type: ignore[arg-type]
        self.drop = Dropout(dropout)
        self.norm2 = ChannelLayerNorm(channels)
        self.mlp = MLP(channels, mlp_ratio, dropout, spatial_dims)

    def forward(self, x: Tensor) -> Tensor:
        xc = x.movedim(1, -1).contiguous()
        # Out of place: the input may be a skip connection and the mixer's output seen by hooks.
        y = xc + self.drop(self.mixer(self.norm1.norm(xc).movedim(-1, 1)).movedim(1, -1))
        if self._diet(y):
            return mlp_residual(y, self.norm2.norm, self.mlp).movedim(-1, 1)
        normed = self.norm2.norm(y)
        if _can_modify_inplace(y, normed) and y.is_contiguous():
            return self.mlp.add_to_(y, normed).movedim(-1, 1)
        return (y + self.mlp.forward_channels_last(normed)).movedim(-1, 1)

    def _diet(self, y: Tensor) -> bool:
        """Whether the MLP branch takes :func:`mlp_residual` (training with autograd, plain float, no capture)."""
        return (
            torch.is_grad_enabled() and y.requires_grad and not traced() and y.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled(y.device.type)
        )


def channels_last(x: Tensor) -> Tensor:
    """``x`` with channels-last memory (what oneDNN convolutions and the Factorizer blocks run fastest on)."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return x if fmt is None else x.contiguous(memory_format=fmt)


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
        out = centred.mul_(scale) if _can_modify_inplace(centred) else centred * scale
    return out.view(b, *x.shape[2:], c).movedim(-1, 1)


def _conv_padded_input(conv: nn.Module, x: Tensor) -> Tensor:
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
        h = act(instance_norm(_conv_padded_input(conv1, x), norm1))
        h = instance_norm(conv2(h), norm2)
        return F.leaky_relu(h + self.skip(x), 0.01)


class ConvStem(nn.Module):
    """The paper's stem: one bias-free 3x3 convolution (channels-last, see :func:`channels_last`)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return _conv_padded_input(self.conv, channels_last(x))


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
        return self.conv(x)


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
