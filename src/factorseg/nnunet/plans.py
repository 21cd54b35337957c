"""nnU-Net plans -> Factorizer arguments, and the adapter nnU-Net drives. Needs no nnunetv2."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from factorseg.errors import InputError

#: The paper's widths (32, 64, ..., one per stage), for plans that do not name ``features_per_stage``.
BASE_WIDTH = 32


def check_strides(strides: Sequence[Sequence[int] | int], dims: int | None = None) -> None:
    """Refuse plans the Factorizer cannot follow: it halves every dimension at every stage.

    Accepted: ``[1, 1, 1]`` for the first stage, then ``[2, 2, 2]`` for each further one (``[1, 1]``,
    ``[2, 2]`` ... in 2D). nnU-Net plans anisotropic strides such as ``[1, 2, 2]`` for data whose spacing
    or shape differs between axes; those plans are refused with one message naming their strides.
    """
    rows = [[int(s)] * (dims or 1) if isinstance(s, int) else [int(v) for v in s] for s in strides]
    if dims is None:
        dims = len(rows[0]) if rows else 0
    wanted = [[1] * dims] + [[2] * dims] * (len(rows) - 1)
    if len(rows) < 2 or rows != wanted:
        raise InputError(
            f"nnUNetTrainerFactorizer needs plans whose strides are {[1] * dims} then {[2] * dims} at every "
            f"further stage (the Factorizer halves every dimension at each stage, at least 2 stages); these plans "
            f"have strides {rows}; plan with isotropic strides (see docs/nnunet.md, 'Strides') or use another trainer"
        )


def round_widths(widths: Sequence[int], head_dim: int) -> tuple[int, ...]:
    """``widths`` rounded up to multiples of ``head_dim`` (every Factorizer width must be one)."""
    return tuple(int(math.ceil(int(w) / head_dim) * head_dim) for w in widths)


def factorizer_kwargs(
    patch_size: Sequence[int],
    strides: Sequence[Sequence[int] | int],
    in_channels: int,
    out_channels: int,
    features_per_stage: Sequence[int] | None = None,
    head_dim: int = 8,
) -> dict[str, Any]:
    """Arguments of ``factorseg.models.create("swin_factorizer", ...)`` for one nnU-Net configuration.

    One Factorizer stage per nnU-Net stage, widths from ``features_per_stage`` (rounded up to multiples
    of ``head_dim``), deep supervision with one head per decoder output nnU-Net's loss expects
    (``stages - 1``: full, 1/2, ... resolution), the positional embedding sized for the patch. Every
    other choice is the class default (the paper's network).
    """
    patch = [int(p) for p in patch_size]
    check_strides(strides, len(patch))
    levels = len(strides)
    widths = features_per_stage if features_per_stage is not None else [BASE_WIDTH * 2**i for i in range(levels)]
    if len(widths) != levels:
        raise InputError(f"the plans name {len(widths)} features_per_stage for {levels} stages: {list(widths)}")
    total = 2 ** (levels - 1)
    if any(p % total for p in patch):
        raise InputError(f"the plans' patch size {patch} is not divisible by the total stride {total} of {levels} stages")
    return dict(
        in_channels=int(in_channels),
        out_channels=int(out_channels),
        spatial_dims=len(patch),
        widths=round_widths(widths, head_dim),
        deep_supervision=True,
        ds_heads=levels - 1,
        pos_embed=True,
        crop=patch,
    )


class NNUNetFactorizer(nn.Module):
    """A Factorizer as nnU-Net drives its networks.

    With ``deep_supervision`` (nnU-Net's trainer sets it) it returns every head, ``[full, 1/2, ...]``,
    in training *and* eval mode (nnU-Net's validation step computes the deep-supervision loss in eval
    mode); without it, the full-resolution logits. The heads always exist, so the weights of a model
    trained with deep supervision load into one built for inference. The Factorizer is ``.factorizer``
    (its weights are the checkpoint's ``factorizer.*`` keys).
    """

    def __init__(self, factorizer: nn.Module, deep_supervision: bool = True) -> None:
        super().__init__()
        self.factorizer = factorizer
        self.deep_supervision = deep_supervision

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if self.deep_supervision:
            return self.factorizer.forward_all(x)
        return self.factorizer.forward_all(x, heads=False)[0]
