"""The U-shaped Factorizer network and the presets of the paper."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from factorseg.models.blocks import ConvBlock, ConvStem, Downsample, FactorizerBlock, PositionalEmbedding, Upsample
from factorseg.models.layers.conv import (
    add_pointwise, conv_nd, conv_transpose, pointwise_to_channels_first, pointwise_weight,
)
from factorseg.models.layers.dropout import Dropout
from factorseg.models.layers.mixer import with_mixer_path
from factorseg.models.layers.nmf import Init, NMFConfig, Solver

Variant = Literal["swin", "local", "global"]

Stem = Literal["conv", "conv_block"]

# The paper's networks (Ashtari et al., MedIA 2023; the authors' configs
# ``bin/configs/{brats,isles}/config_*_swin-factorizer.yaml``). ``crop`` is the training patch edge the
# preset was designed for (its positional embedding is sized for it); the model itself runs on any
# size divisible by its total stride. Every architectural choice not listed is the class default,
# which is the paper's (see :class:`Factorizer`).
PRESETS: dict[str, dict[str, Any]] = {
    "brats": dict(
        in_channels=4, out_channels=3, widths=(32, 64, 128, 256, 512), head_dim=8, window_size=8, rank=1,
        nmf_iters=5, solver="hals", mlp_ratio=2.0, dropout=0.1, deep_supervision=True, ds_heads=3,
        pos_embed=True, crop=128,
    ),
    "isles22": dict(
        in_channels=2, out_channels=1, widths=(32, 64, 128, 256, 512), head_dim=4, window_size=4, rank=1,
        nmf_iters=5, solver="hals", mlp_ratio=4.0, dropout=0.1, deep_supervision=True, ds_heads=3,
        pos_embed=True, crop=64,
    ),
}

#: The architectural choices a trained model's config records explicitly (:func:`explicit_architecture`),
#: with the values the Factorizer's signature gives them.
ARCHITECTURE_KEYS = ("stem", "down_norm", "proj_bias", "fuse_dropout")
#: Those choices in factorseg models made before the paper-faithful defaults (configs without ``stem``).
LEGACY_ARCHITECTURE: dict[str, Any] = dict(
    stem="conv_block", down_norm=True, init="fixed_u", proj_bias=True, fuse_dropout=False, pos_embed=False,
)
FACTORIZERS = ("swin_factorizer", "local_factorizer", "global_factorizer")


def explicit_architecture(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """``model_cfg`` with the architectural choices spelt out (defaults filled in) for a Factorizer.

    Training records them, so that a saved model keeps meaning the same network when defaults change.
    """
    if model_cfg.get("name") not in FACTORIZERS:
        return dict(model_cfg)
    defaults = inspect.signature(Factorizer.__init__).parameters
    return {**{key: defaults[key].default for key in ARCHITECTURE_KEYS}, **model_cfg}


def upgrade_legacy(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """A saved Factorizer config without ``stem`` predates the paper's defaults: give it its own choices."""
    if model_cfg.get("name") not in FACTORIZERS or "stem" in model_cfg:
        return dict(model_cfg)
    return {**LEGACY_ARCHITECTURE, **model_cfg}


class Factorizer(nn.Module):
    """U-shaped network with Factorizer blocks at every encoder and decoder stage (the paper's network).

    Stem -> Factorizer blocks -> [2x2 strided conv down -> Factorizer blocks] per stage (a positional
    embedding before the bottleneck's) -> [2x2 transposed conv up -> concatenation with the skip ->
    1x1 fuse -> dropout -> Factorizer blocks] per stage -> 1x1 heads. In training mode with
    ``deep_supervision`` it returns ``[full-res, 1/2-res, ...]`` logits (``ds_heads`` in all);
    otherwise the full-resolution tensor; :meth:`forward_all` returns every head in any mode.

    The defaults are the paper's choices; the alternatives are options:
    ``stem="conv"`` (one bias-free 3x3 conv) or ``"conv_block"`` (two conv + instance norm + LeakyReLU
    with a residual); ``down_norm`` adds a bias and a LayerNorm to the downsampling conv; ``init``
    (default ``"fixed_uv"``, the paper's, or ``"fixed_u"`` (the default of the global variant, which has
    no fixed window), ``"random"``, ``"nndsvd"``; see :class:`factorseg.models.layers.nmf.NMF`); ``proj_bias`` gives the mixers' in-projections and the skip fusions
    a bias; ``fuse_dropout`` is the dropout after the fusion; ``pos_embed_size`` the bottleneck's
    positional embedding (``None``: none); ``eps`` the NMF's denominator guard (the paper's 1e-8).

    ``variant`` picks the matricize: ``"swin"`` (windows at shifts 0 and window/2, averaged),
    ``"local"`` (windows, no shift) or ``"global"`` (the whole map is one window).
    ``checkpoint_blocks`` trades training time for memory: the Factorizer blocks keep no activations
    and are recomputed in the backward pass (same values and gradients).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 3,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        encoder_depths: Sequence[int] | None = None,
        decoder_depths: Sequence[int] | None = None,
        variant: Variant = "swin",
        head_dim: int = 8,
        window_size: int | Sequence[int] = 8,
        shifts: Sequence[int | Sequence[int]] | None = None,
        rank: int = 1,
        nmf_iters: int = 5,
        solver: Solver = "hals",
        init: Init | None = None,
        backprop_iters: int | None = None,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        deep_supervision: bool = False,
        ds_heads: int = 3,
        pos_embed_size: Sequence[int] | None = None,
        stem: Stem = "conv",
        down_norm: bool = False,
        proj_bias: bool = False,
        fuse_dropout: bool = True,
        eps: float | None = 1e-8,
        checkpoint_blocks: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        levels = len(widths)
        encoder_depths = tuple(encoder_depths or (1,) * levels)
        decoder_depths = tuple(decoder_depths or (1,) * (levels - 1))
        if len(encoder_depths) != levels or len(decoder_depths) != levels - 1:
            raise ValueError("need one encoder depth per width and one decoder depth per width but the last")
        if any(w % head_dim for w in widths):
            raise ValueError(f"every width {widths} must be divisible by head_dim {head_dim}")
        if variant not in ("swin", "local", "global"):
            raise ValueError(f"unknown Factorizer variant {variant!r}")
        if stem not in ("conv", "conv_block"):
            raise ValueError(f"unknown stem {stem!r}; choose conv (the paper's) or conv_block")
        if deep_supervision and not 1 <= ds_heads <= levels - 1:
            raise ValueError(f"ds_heads must be between 1 and {levels - 1}")
        if variant == "global":
            window, shift_list = None, [0]
        else:
            window = window_size
            if shifts is not None:
                shift_list = list(shifts)
            elif variant == "swin":
                half = [w // 2 for w in (window_size if not isinstance(window_size, int) else [window_size] * spatial_dims)]
                shift_list = [0, half]
            else:
                shift_list = [0]
        self.spatial_dims, self.deep_supervision, self.ds_heads = spatial_dims, deep_supervision, ds_heads
        self.checkpoint_blocks = checkpoint_blocks
        #: Each up-sampling and the 1x1 fuse after it as one transposed convolution (:meth:`_fuse`).
        self.compose_up_fuse = True
        self.total_stride = 2 ** (levels - 1)
        self._seed = seed
        nmf = NMFConfig(rank, nmf_iters, solver, init, backprop_iters, seed, eps)

        def blocks(channels: int, depth: int) -> nn.Sequential:
            made = []
            for _ in range(depth):
                made.append(
                    FactorizerBlock(
                        channels, spatial_dims, mlp_ratio, dropout, head_dim=head_dim, window_size=window,
                        shifts=shift_list, nmf=dataclasses.replace(nmf, seed=self._seed), in_bias=proj_bias,
                    )
                )
                self._seed += 1
            return nn.Sequential(*made)

        self.stem = (ConvStem if stem == "conv" else ConvBlock)(in_channels, widths[0], spatial_dims)
        self.down = nn.ModuleList(
            [Downsample(widths[i - 1], widths[i], spatial_dims, norm=down_norm) for i in range(1, levels)]
        )
        self.encoder = nn.ModuleList([blocks(w, d) for w, d in zip(widths, encoder_depths)])
        self.pos_embed = PositionalEmbedding(widths[-1], pos_embed_size, dropout) if pos_embed_size else None
        conv = conv_nd(spatial_dims)
        self.up = nn.ModuleList([Upsample(widths[i + 1], widths[i], spatial_dims) for i in range(levels - 1)])
        self.fuse = nn.ModuleList([conv(2 * widths[i], widths[i], 1, bias=proj_bias) for i in range(levels - 1)])
        self.fuse_drop = Dropout(dropout if fuse_dropout else 0.0)
        self.decoder = nn.ModuleList([blocks(widths[i], decoder_depths[i]) for i in range(levels - 1)])
        self.head = conv(widths[0], out_channels, 1)
        n_aux = ds_heads - 1 if deep_supervision else 0
        self.aux_heads = nn.ModuleList([conv(widths[i], out_channels, 1) for i in range(1, 1 + n_aux)])

    def check_size(self, spatial: Sequence[int]) -> None:
        """Raise a clear error for input sizes the strided path cannot halve evenly."""
        bad = [s for s in spatial if s % self.total_stride]
        if bad:
            raise ValueError(
                f"input size {tuple(spatial)} is not divisible by the network's total stride {self.total_stride}; "
                "pad the input or use sliding-window inference"
            )

    def _stage(self, stage: nn.Sequential, h: Tensor) -> Tensor:
        """Run a stage of blocks; with ``checkpoint_blocks`` in training, recompute each block in backward."""
        if not (self.checkpoint_blocks and self.training and torch.is_grad_enabled()):
            return stage(h)
        for block in stage:  # the RNG state is restored for the recomputation: the same dropout masks
            h = checkpoint(block, h, use_reentrant=False)
        return h

    def _fuse(self, i: int, low: Tensor, skip: Tensor) -> Tensor:
        """``fuse[i](cat([up[i](low), skip]))`` (a 1x1 convolution after the up-sampling), without the up-sampled map.

        The 1x1 convolution's part that reads the up-sampled channels, applied after the transposed
        convolution, is itself one transposed convolution whose weights are the two composed (a product of
        small weight tensors): the up-sampled map is never formed, multiplied at full resolution, or kept
        for the backward pass (at 128^3 with 32 channels, 256 MiB and three products over 2 M voxels).
        The skip's part is a product over channels-last voxels added to it; no concatenated copy is made
        (the skip is kept for the backward pass anyway, by the down-sampling convolution). The same values
        as the modules in turn, up to float rounding (``compose_up_fuse=False`` applies them in turn, as
        drawn, for FLOP counts). Returns channels-last memory.
        """
        conv, up = self.fuse[i], self.up[i].conv
        c = up.out_channels
        w = pointwise_weight(conv)
        w_up, w_skip = w[:, :c], w[:, c:]
        if self.compose_up_fuse:
            bias = None if up.bias is None else w_up @ up.bias
            if conv.bias is not None:
                bias = conv.bias if bias is None else bias + conv.bias
            out = conv_transpose(up, low, torch.einsum("ic...,oc->io...", up.weight, w_up), bias)
        else:
            up_map = self.up[i](low)
            out = F.linear(up_map.movedim(1, -1), w_up, conv.bias).movedim(-1, 1)
        return add_pointwise(out, skip, w_skip)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        outputs = self.forward_all(x, heads=self.training and self.deep_supervision)
        return outputs if self.training and self.deep_supervision else outputs[0]

    def forward_all(self, x: Tensor, heads: bool = True) -> list[Tensor]:
        """Logits of every head, ``[full-res, 1/2-res, ...]``, in any mode (only the first without ``heads``)."""
        self.check_size(x.shape[2:])
        skips = []
        h = self._stage(self.encoder[0], self.stem(x))
        for i, (down, stage) in enumerate(zip(self.down, self.encoder[1:]), start=1):
            skips.append(h)
            h = down(h)
            if i == len(self.down) and self.pos_embed is not None:
                h = self.pos_embed(h)
            h = self._stage(stage, h)
        decoded: list[Tensor] = []
        for i in reversed(range(len(self.up))):
            h = self.fuse_drop(self._fuse(i, h, skips[i]))
            h = self._stage(self.decoder[i], h)
            decoded.append(h)
        out = pointwise_to_channels_first(self.head, h)
        if not heads:
            return [out]
        # decoded[-1] is full resolution; decoded[-1 - k] is 1 / 2**k.
        return [out, *(pointwise_to_channels_first(head, decoded[-1 - k]) for k, head in enumerate(self.aux_heads, start=1))]


def build_factorizer(variant: Variant, preset: str | None = None, **overrides: Any) -> Factorizer:
    """A Factorizer of ``variant``, starting from ``preset`` (``brats``, ``isles22``) and ``overrides``.

    ``pos_embed=True`` sizes the positional embedding for ``crop`` (the training patch edge) unless
    ``pos_embed_size`` is given; ``pos_embed=False`` removes a preset's; without ``pos_embed``,
    ``pos_embed_size`` (default none) decides.
    """
    params: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        params.update(PRESETS[preset])
    params.update(overrides)
    crop = params.pop("crop", None)
    pos_embed = params.pop("pos_embed", None)
    if pos_embed:
        if params.get("pos_embed_size") is None:
            if crop is None:
                raise ValueError("pos_embed=True needs crop (the training patch edge) or pos_embed_size")
            levels = len(params.get("widths", (32, 64, 128, 256, 512)))
            dims = params.get("spatial_dims", 3)
            edges = [crop] * dims if isinstance(crop, int) else list(crop)
            params["pos_embed_size"] = [max(1, int(e) // 2 ** (levels - 1)) for e in edges]
    elif pos_embed is not None:
        params["pos_embed_size"] = None
    return Factorizer(variant=variant, **params)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the duration; its training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def count_flops(model: nn.Module, shape: Sequence[int]) -> int:
    """Floating-point operations (a multiply-add counts 2) of one eval-mode forward pass on zeros.

    Convolutions and matrix products only. The NMF mixers are counted in their window formulation
    (``X^T u`` and ``V (U^T W_out^T)`` per window, as in the paper; a copy of ``model`` whose mixers
    take the window path runs), so that the figure describes the architecture rather than this
    implementation's shortcuts.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counted = with_mixer_path(model, "windows").eval()
    for net in counted.modules():
        if isinstance(net, Factorizer):
            net.compose_up_fuse = False  # the up-sampled map and the fuse's product over it, as drawn
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        counted(torch.zeros(*shape))
    return int(counter.get_total_flops())
