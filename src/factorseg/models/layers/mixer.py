"""The NMF mixer (the Factorizer's replacement for attention) and its two ways to the same values.

``path`` is the one switch, chosen at construction: ``"subblocks"`` (the default) takes the
sub-block path wherever it applies, ``"windows"`` always the window path, ``"plain"`` the window path
with the plain NMF iterations instead of the Gram form (``NMF(fused=False)``). The three agree to
float rounding (``tests/test_mixer_reference.py``); the last two are there to compare against.
:func:`with_mixer_path` gives a copy of a built network whose mixers take another path.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from factorseg.models.layers import pool
from factorseg.models.layers.conv import conv_nd, pointwise_weight
from factorseg.models.layers.dropout import Keep, drop_with
from factorseg.models.layers.fastpath import can_modify_inplace, linear, row_blocks, traced, unrecorded_eager
from factorseg.models.layers.nmf import NMF, NMFConfig, head_loadings_t
from factorseg.models.layers.norm import fold_norm, layer_norm_rows, norm_linear_grads, normalized
from factorseg.models.layers.subblock_boxes import add_subblock_output, project_subblocks
from factorseg.models.layers.windows import (
    WindowLayout,
    WindowMatricize,
    crop_channels_last,
    from_subblocks,
    matrices_view,
    pad_channels_last,
    shift_window_sums,
    subblock_edges,
    subblock_weights,
    subblock_windows,
    to_subblocks,
    window_stack,
    window_sums,
    window_unstack,
)

MixerPath = Literal["subblocks", "windows", "plain"]
MIXER_PATHS: tuple[str, ...] = get_args(MixerPath)


def _check_path(path: str) -> None:
    if path not in MIXER_PATHS:
        raise ValueError(f"unknown mixer path {path!r}; choose one of {', '.join(MIXER_PATHS)}")


def subblocks_pay(channels: int, edges: Sequence[int]) -> bool:
    """Whether the sub-block path beats the window path for ``channels`` and sub-blocks of ``edges``.

    Per sub-block of ``Q`` voxels the sub-block path keeps a ``C x C`` Gram matrix and gathers its
    windows' factors (``2 S H C`` values), so its per-voxel overhead grows as ``C / Q``; the window
    path gathers every window of every shift, which costs more for larger windows. Measured on a
    block's mixer, training step and forward pass (one thread, ``docs/performance.md``, "mixer path
    rule"): with 8-voxel sub-blocks (windows of 4 shifted by 2) the sub-block path is level at
    ``C = 2 Q`` and 1.1-1.4x slower beyond; with 64-voxel ones (windows of 8 shifted by 4) it is
    1.3-1.7x faster up to ``C = 4 Q``. Hence ``C <= 2 Q``, and ``C <= 4 Q`` from 64 voxels on.
    """
    q = math.prod(edges)
    return channels <= (4 if q >= 64 else 2) * q


class NMFMixer(nn.Module):
    """Context mixing by NMF: in-projection -> ReLU -> matricize -> NMF -> inverse -> out-projection.

    Runs channels-last: the in-projection is one matrix product over all voxels, and the
    out-projection, its bias and the average over shifts are folded into the reconstruction
    (``W_out U V^T`` becomes ``V (U^T W_out^T)``). Two equivalent ways to the same values:

    * Sub-block path (rank-1 HALS, fixed or random init; the presets): the map is laid out
      sub-block-major once (:func:`factorseg.models.layers.windows.to_subblocks`); one product gives every
      sub-block's Gram blocks, which add up to every window's of every shift; the NMF iterates on
      those ``head_dim x head_dim`` matrices (:meth:`factorseg.models.layers.nmf.NMF.solve_gram_form`).
      Since ``v = a X^T u``, the reconstruction of a voxel is a linear map of its own features,
      ``x^T (sum_h a_h u_h u_h^T W_out^T) / S`` per window, of rank ``H``; each sub-block gathers
      the ``H x C`` factors of its windows of every shift, and two thin products per sub-block give
      the output. No window of any shift is ever gathered, and ``v`` is never formed. On the CPU, for
      unpadded maps, all of this that is per voxel runs one cache-sized box of sub-blocks at a time, in
      inference and training (:mod:`~factorseg.models.layers.subblock_boxes`).
    * Window path (other solvers and inits, ranks > 1, huge values, export tracing, half precision,
      many channels for small sub-blocks (:func:`subblocks_pay`), ``path="windows"``): the windows of
      all shifts are gathered into a window-major buffer
      (:func:`factorseg.models.layers.windows.window_stack`), ``nmf.decompose`` factorises its
      ``(B, S, H, W, head_dim, N)`` matrices (a strided view, the values :meth:`matrices` returns),
      and the reconstruction is scattered back.

    ``nmf`` holds the NMF settings (its ``init=None`` is the paper's: ``fixed_uv`` for windows,
    ``fixed_u`` for the global variant, which has no fixed window for a ``v0``); ``path`` is the
    module docstring's switch. Inputs may be channels-first or channels-last in memory; the output
    is channels-last in memory.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        head_dim: int = 8,
        window_size: int | Sequence[int] | None = 8,
        shifts: Sequence[int | Sequence[int]] = (0,),
        nmf: NMFConfig = NMFConfig(),
        in_bias: bool = False,
        path: MixerPath = "subblocks",
    ) -> None:
        super().__init__()
        _check_path(path)
        conv = conv_nd(spatial_dims)
        self.in_proj = conv(channels, channels, 1, bias=in_bias)
        self.out_proj = conv(channels, channels, 1)
        positional = nmf.init_for(window_size is not None) == "fixed_uv"
        self.matricize = WindowMatricize(spatial_dims, head_dim, window_size, shifts, positional=positional)
        self.nmf = NMF.from_config(head_dim, nmf, self.matricize.window_size, fused=path != "plain")
        self.path: MixerPath = path

    def extra_repr(self) -> str:
        return f"path={self.path}"

    def matrices(self, x: Tensor) -> tuple[Tensor, WindowLayout]:
        """The nonnegative window matrices the NMF factorises, and their layout."""
        return self.matricize(torch.relu(self.in_proj(x)))

    def forward(
        self, x: Tensor, norm: nn.LayerNorm | None = None, residual: Tensor | None = None, keep: Keep | None = None,
        add_input: bool = False, channels_last: bool = False,
    ) -> Tensor:
        """The mixed map of ``x`` (``(B, C, *spatial)``), or of ``norm(x)`` (over channels) when ``norm`` is given;
        ``residual + `` that map when ``residual`` (channels-last ``(B, *spatial, C)``) is given, with the map
        dropped out by ``keep`` (a :func:`~factorseg.models.layers.dropout.keep_mask` over ``residual``'s shape).
        ``add_input`` takes ``x`` itself as the residual (its channels-last view). ``channels_last``: ``x`` and the
        result are channels-last ``(B, *spatial, C)``. The block uses both, so that no view lies between the
        gradients of ``x``, or of the result, and the functions that make them: autograd then sums the two
        gradients of ``x`` in place (it takes over only a first-arriving gradient that is not a view) instead of
        into a new map (500 MiB a block at 160^3).

        On the CPU, for unpadded maps on the sub-block path (inference, and training with ``norm``), the
        normalisation, in-projection and sub-block layout, and the output, dropout and residual sum, run one
        cache-sized box of sub-blocks at a time (:mod:`~factorseg.models.layers.subblock_boxes`). Other training
        calls on the sub-block path with ``norm`` keep less for the backward pass through
        :class:`_NormProjectSubblocks`. The values are those of ``residual + drop(self(norm(x)))``.
        """
        lay = self.matricize.layout_of(x.movedim(-1, 1) if channels_last else x)
        edges = subblock_edges(lay)
        xl = x if channels_last else x.movedim(1, -1)
        if add_input:
            if residual is not None:
                raise ValueError("give either a residual or add_input, not both")
            residual = xl
        h = blocks = known = None
        boxes = self._boxwise(lay, edges, xl, norm)
        if boxes:
            blocks, *known = project_subblocks(
                xl, None if norm is None else (norm.weight, norm.bias, norm.eps), pointwise_weight(self.in_proj),
                self.in_proj.bias, lay, edges, self.matricize.head_dim, self._v0_weights(lay, edges, xl.dtype),
            )
        elif norm is not None and self._diet(xl, edges):
            blocks = _NormProjectSubblocks.apply(
                xl.contiguous(), norm.weight, norm.bias, pointwise_weight(self.in_proj), self.in_proj.bias,
                norm.eps, lay, edges,
            )
        else:
            # relu_ is safe: the linear's backward does not need its output.
            h = pad_channels_last(torch.relu_(self._project(xl, norm)), lay)
            if self._takes_subblocks(h, edges):
                blocks = to_subblocks(h, lay, edges)
        factors = self._subblock_factors(blocks, lay, edges, known) if blocks is not None else None
        if factors is None:
            out = self._window_path(h if h is not None else from_subblocks(blocks, lay, edges), lay)
        elif residual is not None and boxes:
            out = add_subblock_output(residual, blocks, *factors, self.out_proj.bias, keep, lay, edges)
            return out if channels_last else out.movedim(-1, 1)
        else:
            out = self._subblock_output(blocks, factors, lay, edges)
        out = crop_channels_last(out, lay)
        if keep is not None:
            out = drop_with(out, keep)
        out = out if residual is None else residual + out
        return out if channels_last else out.movedim(-1, 1)

    def _boxwise(self, lay: WindowLayout, edges: Sequence[int], xl: Tensor, norm: nn.LayerNorm | None) -> bool:
        """Whether this call runs box by box (:mod:`~factorseg.models.layers.subblock_boxes`): on the CPU, an
        unpadded map on the sub-block path, and either nothing recorded by autograd, or ``norm`` given and
        no truncated gradient (which needs the Gram matrices' second form, :func:`gram_pair`)."""
        if xl.device.type != "cpu" or lay.is_padded or torch.is_autocast_enabled("cpu"):
            return False
        if not self._takes_subblocks(xl, edges):
            return False
        if unrecorded_eager(xl, *self.parameters(), *(() if norm is None else norm.parameters())):
            return True
        return norm is not None and not self.nmf.needs_left_gram

    def _project(self, xl: Tensor, norm: nn.LayerNorm | None) -> Tensor:
        """The in-projection of ``norm(xl)`` (channels-last), block by block where nothing is recorded.

        Without autograd the normalised rows of one :func:`row_blocks` block at a time
        (:func:`~factorseg.models.layers.norm.layer_norm_rows`, the affine map folded into the product) go through
        the product straight into the output: no normalised copy of the map (the same values, row by row).
        """
        w, b = pointwise_weight(self.in_proj), self.in_proj.bias
        if norm is None or not unrecorded_eager(xl, *self.in_proj.parameters(), *norm.parameters()):
            h = xl if norm is None else norm(xl)
            return linear(h.reshape(-1, h.shape[-1]), w, b).view(*h.shape[:-1], w.shape[0])
        rows = xl.reshape(-1, xl.shape[-1])
        out = pool.empty((rows.shape[0], w.shape[0]), rows.dtype, rows.device)
        wf, bf = fold_norm(w, b, norm.weight, norm.bias)
        for src, dst in zip(row_blocks(rows, rows.shape[1]), row_blocks(out, rows.shape[1])):
            dst.copy_(linear(layer_norm_rows(src, norm.eps)[0], wf, bf))
        return out.view(*xl.shape[:-1], w.shape[0])

    def _diet(self, xl: Tensor, edges: Sequence[int]) -> bool:
        """Whether :class:`_NormProjectSubblocks` serves this call: training with autograd on the sub-block path."""
        return (
            torch.is_grad_enabled() and (xl.requires_grad or self.in_proj.weight.requires_grad)
            and not torch.is_autocast_enabled(xl.device.type) and self._takes_subblocks(xl, edges)
        )

    def _takes_subblocks(self, h: Tensor, edges: Sequence[int]) -> bool:
        """Whether this call tries the sub-block path on the in-projected features ``h (B, *padded, C)``.

        Where ``path`` asks for it and it applies: rank-1 HALS with an init it covers
        (``nmf.fusable``, which also depends on ``num_iters``, changeable after construction); no
        graph capture (the path falls back on data-dependent checks); no half precision (autocast:
        the window path factorises in float32); and few enough channels for the sub-block size
        (:func:`subblocks_pay`). It still falls back where the values need rescaling.
        """
        return (
            self.path == "subblocks" and self.nmf.fusable and not traced()
            and h.dtype in (torch.float32, torch.float64) and subblocks_pay(h.shape[-1], edges)
        )

    def _v0_weights(self, lay: WindowLayout, edges: Sequence[int], dtype: torch.dtype) -> Tensor | None:
        """The ``fixed_uv`` init's ``v0`` as weights of each sub-block's voxels per shift (``(S, K, Q)``,
        :func:`subblock_weights`); ``None`` for the other inits."""
        if self.nmf.init != "fixed_uv":
            return None
        v0 = self.nmf.initial_v(lay.window).to(dtype)
        return subblock_weights(v0[:, 0], lay, edges, self.matricize.tables)

    def _subblock_factors(
        self, blocks: Tensor, lay: WindowLayout, edges: Sequence[int],
        known: tuple[Tensor, Tensor | None] | None = None,
    ) -> tuple[Tensor, Tensor] | None:
        """The NMF on the sub-block path, from the sub-block-major features ``blocks (B, K, Q, C)``
        (:func:`to_subblocks` of the in-projected map), as each sub-block's linear map: the factors
        ``(B K, S H, C)`` whose product ``left^T right`` it is; ``None`` where the window path must run.
        ``known``: the sub-blocks' Gram matrices and ``X v0`` parts where
        :func:`~factorseg.models.layers.subblock_boxes.project_subblocks` took them."""
        b, c = blocks.shape[0], blocks.shape[-1]
        tables = self.matricize.tables
        v0 = self.nmf.initial_v(lay.window).to(blocks.dtype) if self.nmf.init == "fixed_uv" else None
        grams, per_shift = known if known is not None else (None, None)
        solved = self.nmf.solve_gram_form(
            matrices_view(blocks.unsqueeze(1), self.matricize.head_dim),  # (B, 1, H, K, M, Q)
            self.nmf.eps_for(blocks.dtype),
            v0,
            # Per sub-block (K) -> per window of each shift (S, W): (B, H, S, W, M, M) -> (B, S, H, W, M, M).
            # (squeeze, not [:, 0]: its gradient is a view, where indexing's fills a zero tensor and copies.)
            sums=lambda g: window_sums(g.squeeze(1), lay, edges, dim=2, tables=tables).transpose(1, 2),
            times_v0=lambda v: self._times_v0(blocks, v, lay, edges, per_shift),
            grams=grams,
        )
        if solved is None:
            return None
        u, a = solved  # (B, S, H, W, M, 1), (B, S, H, W)
        s, heads = len(lay.shifts), u.shape[2]
        w_out = pointwise_weight(self.out_proj)
        left = head_loadings_t(u * a[..., None, None])  # (B S W, H, C): rows a_h u_h^T
        right = head_loadings_t(u) @ (w_out.t() / s)  # (B S W, H, C): rows u_h^T W_out^T / S
        # Each sub-block's map is the sum over its windows of left^T right, of rank S H < C: the factors
        # of its windows are gathered (2 S H C values instead of S C^2) and applied as two thin products.
        left, right = (
            subblock_windows(t.view(b, s, lay.num_windows, heads * c), lay, edges, tables).view(-1, s * heads, c)
            for t in (left, right)
        )
        return left, right

    def _subblock_output(
        self, blocks: Tensor, factors: tuple[Tensor, Tensor], lay: WindowLayout, edges: Sequence[int]
    ) -> Tensor:
        """Output ``(B, *padded, C)``: each sub-block's rows times its map (:meth:`_subblock_factors`), plus the bias."""
        left, right = factors
        rec = torch.bmm(torch.bmm(blocks.reshape(-1, *blocks.shape[2:]), left.transpose(1, 2)), right)
        if self.out_proj.bias is not None:  # the shift average of a constant: the bias once
            rec = rec.add_(self.out_proj.bias)
        return from_subblocks(rec.view(blocks.shape), lay, edges)

    def _times_v0(
        self, blocks: Tensor, v0: Tensor, lay: WindowLayout, edges: Sequence[int], per_block: Tensor | None = None
    ) -> Tensor:
        """``X v0`` of every window of every shift, ``(B, S, H, W, M, 1)``, from sub-blocks ``(B, K, Q, C)``.

        ``v0`` weights each voxel by its position in its window: a sub-block's voxels get the ``v0``
        entries of the slot the sub-block fills in its window of each shift, so per shift one weighted
        sum per sub-block (``per_block``, ``(B, S, K, C)``, where known), then the per-window sums (no
        window is gathered).
        """
        b, c = blocks.shape[0], blocks.shape[-1]
        tables = self.matricize.tables
        if per_block is None:
            weights = subblock_weights(v0[:, 0], lay, edges, tables)  # (S, K, Q)
            per_block = torch.einsum("skq,bkqc->bskc", weights, blocks)
        per_window = shift_window_sums(per_block, lay, edges, tables)  # (B, S, W, C)
        m = self.matricize.head_dim
        return per_window.view(b, len(lay.shifts), lay.num_windows, c // m, m).transpose(2, 3).unsqueeze(-1)

    def _window_path(self, h: Tensor, lay: WindowLayout) -> Tensor:
        """Output ``(B, *padded, C)`` through the gathered windows and ``nmf.decompose``."""
        b, c = h.shape[0], h.shape[-1]
        heads = c // self.matricize.head_dim
        stacked = window_stack(h, lay, self.matricize.tables)  # (B, S, W, N, C)
        mats = matrices_view(stacked, self.matricize.head_dim)
        u, v = self.nmf.decompose(mats, nonnegative=True, column_shape=lay.window)
        s, w, n, r = len(lay.shifts), lay.num_windows, lay.window_voxels, u.shape[-1]
        # V per window and all heads: (B S W, N, H R) (a view for the fused path); the loadings as
        # block-diagonal (B S W, H R, C) rows, with the out-projection and the shift average folded in.
        v_all = v.permute(0, 1, 3, 4, 2, 5).reshape(b * s * w, n, heads * r)
        w_out = pointwise_weight(self.out_proj).to(u.dtype)
        mixed = head_loadings_t(u) @ (w_out.t() / s)
        out = window_unstack(torch.bmm(v_all, mixed).view(b, s, w, n, c), lay, self.matricize.tables)
        # The bias once per voxel (the shift average of a constant), not broadcast into every window row.
        if self.out_proj.bias is None:
            return out
        bias = self.out_proj.bias.to(out.dtype)
        return out.add_(bias) if can_modify_inplace(out) else out + bias


class _NormProjectSubblocks(torch.autograd.Function):
    """``to_subblocks(pad(relu(LN(x) W^T + b)))`` on channels-last ``x``, keeping little for the backward pass.

    Autograd would keep three maps of ``C`` values per voxel here: the LayerNorm's input, its output
    (the in-projection's input) and the ReLU's output, besides the sub-block copy that the NMF's
    products keep anyway. This keeps the input, the LayerNorm statistics and the sub-blocks (the
    output, shared with those products), recomputes the LayerNorm from its statistics in the backward
    pass (:func:`~factorseg.models.layers.norm.normalized`) and reads the
    ReLU's mask off the sub-blocks. No product is recomputed. Same values and gradients as the plain
    formulation (tests/test_memory_diet.py). Serves the training calls that do not run box by box
    (padded maps, a truncated gradient, other devices): see :mod:`~factorseg.models.layers.subblock_boxes`.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, ln_w: Tensor | None, ln_b: Tensor | None, w: Tensor, b: Tensor | None, eps: float,
        lay: WindowLayout, edges: Sequence[int],
    ) -> Tensor:
        c = x.shape[-1]
        normed, mean, rstd = torch.ops.aten.native_layer_norm(x, [c], ln_w, ln_b, eps)
        h = torch.relu_(linear(normed.view(-1, c), w, b)).view(*x.shape[:-1], w.shape[0])
        del normed
        blocks = to_subblocks(pad_channels_last(h, lay), lay, edges)
        ctx.save_for_backward(x, mean, rstd, ln_w, ln_b, w, blocks)
        ctx.settings = (eps, lay, edges)
        return blocks

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dblocks: Tensor) -> tuple[Tensor | None, ...]:
        x, mean, rstd, ln_w, ln_b, w, blocks = ctx.saved_tensors
        eps, lay, edges = ctx.settings
        c = x.shape[-1]
        need = ctx.needs_input_grad
        # The ReLU's backward (where its output is > 0), in sub-block order, then back to the map.
        dh = crop_channels_last(from_subblocks(torch.ops.aten.threshold_backward(dblocks, blocks, 0), lay, edges), lay)
        dh = dh.reshape(-1, dh.shape[-1])
        a = dh.t() @ normalized(x, mean, rstd).view(-1, c)
        db = dh.sum(0)
        dw, dlw, dlb = norm_linear_grads(a, db, w, ln_w, ln_b)
        dx = None
        if need[0]:
            dn = linear(dh, w.t()).view(x.shape)
            del dh
            dx = torch.ops.aten.native_layer_norm_backward(dn, x, [c], mean, rstd, ln_w, ln_b, [True, False, False])[0]
        return (
            dx, dlw if need[1] else None, dlb if need[2] else None, dw if need[3] else None,
            db if need[4] else None, None, None, None,
        )


def with_mixer_path(model: nn.Module, path: MixerPath) -> nn.Module:
    """A copy of ``model`` (same weights and buffers) whose NMF mixers take ``path``; ``model`` stays as it is.

    For comparing the paths on one built network (FLOP counts in the window formulation, benchmarks).
    """
    _check_path(path)
    other = copy.deepcopy(model)
    for mixer in other.modules():
        if isinstance(mixer, NMFMixer):
            mixer.path = path
            mixer.nmf.fused = path != "plain"
    return other
