"""Extracting the NMF components of a Factorizer model's blocks during a forward pass.

Every Factorizer block factorises each window matrix ``X (head_dim x window voxels)`` of each head as
``X ~ U V^T`` (``U``: channel loadings, ``V``: spatial factor, rank ``R``). :func:`explain` captures those
factors during an ordinary forward pass (the model's output is left bitwise unchanged) and turns them
into component maps (:class:`ComponentMaps`):

* the spatial factor of every head, window and shift is reassembled into a volume at the block's
  resolution with the same inverse as the forward pass (shifted partitions are averaged);
* scale: ``U V^T`` is unchanged by ``u_r * a, v_r / a``, so a raw ``V`` is not comparable between windows.
  Maps use ``V`` scaled by the column norm ``||u_r||`` (and loadings are the unit columns ``u_r / ||u_r||``):
  a map's value at a voxel is then the Euclidean norm, over the head's channels, of component ``r``'s
  part of the reconstruction there, which is the same quantity in every window;
* the relative Frobenius error ``||X - U V^T|| / ||X||`` of every window says how well rank ``R`` fits.

:func:`upsample_maps` resamples the maps from a block's resolution to the input grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorseg.models.blocks import FactorizerBlock
from factorseg.models.layers.mixer import NMFMixer
from factorseg.errors import InputError
from factorseg.models.layers.windows import WindowMatricize
from factorseg.models import eval_mode

__all__ = ["ComponentMaps", "explain", "list_blocks", "upsample_maps"]

_INTERP_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


@dataclass
class ComponentMaps:
    """NMF components of one block for one forward pass (CPU, float32).

    Attributes:
        maps: ``(B, heads * rank, *spatial)`` at the block's resolution; channel ``h * rank + r`` is head
            ``h``, component ``r`` (see the module docstring for the scale).
        loadings: ``(B, S, H, W, head_dim, R)`` unit-norm channel loadings per shift, head and window; they
            index the head's channels of the mixer's in-projection (after its ReLU).
        spatial_factors: ``(B, S, H, W, N, R)`` the scaled spatial factors in window form (``N`` window
            voxels), so ``loadings @ spatial_factors^T`` is the block's rank-R reconstruction ``U V^T``.
        window_error: ``(B, S, H, W)`` relative Frobenius error ``||X - U V^T|| / ||X||`` per window
            (0 for an all-zero window).
        meta: plain-data description (block name, spatial size, stride, heads, rank, window, shifts, ...).
    """

    maps: Tensor
    loadings: Tensor
    spatial_factors: Tensor
    window_error: Tensor
    meta: dict[str, Any]

    @property
    def names(self) -> list[str]:
        """One ``"block/head h/component r"`` title per map channel."""
        block, rank = self.meta["block"], self.meta["rank"]
        return [f"{block}/head {k // rank}/component {k % rank}" for k in range(self.maps.shape[1])]

    def component_table(self) -> list[dict[str, Any]]:
        """Which head and rank component each map channel is, for the JSON sidecar."""
        rank = self.meta["rank"]
        return [
            {"index": k, "block": self.meta["block"], "head": k // rank, "component": k % rank, "name": name}
            for k, name in enumerate(self.names)
        ]


def _named_mixers(model: nn.Module) -> dict[str, NMFMixer]:
    """NMF mixers of ``model`` keyed by the path of their Factorizer block (or their own path)."""
    modules = dict(model.named_modules())
    found: dict[str, NMFMixer] = {}
    for name, module in modules.items():
        if not isinstance(module, NMFMixer):
            continue
        parent, _, leaf = name.rpartition(".")
        key = parent if leaf == "mixer" and isinstance(modules.get(parent), FactorizerBlock) else name
        found[key or name or "mixer"] = module
    return found


def list_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks whose NMF components can be explained, in forward (module) order.

    A Factorizer block is named by its module path (``encoder.2.0``, ``decoder.1.0``); an NMF mixer
    outside a Factorizer block by its own path.
    """
    return list(_named_mixers(model))


def _resolve_blocks(model: nn.Module, blocks: Sequence[str] | None) -> dict[str, NMFMixer]:
    mixers = _named_mixers(model)
    if not mixers:
        raise InputError(f"{type(model).__name__} has no NMF blocks to explain (is it a Factorizer?)")
    if blocks is None:
        return mixers
    if isinstance(blocks, str):
        blocks = [blocks]
    unknown = [b for b in blocks if b not in mixers]
    if unknown:
        raise InputError(
            f"unknown block(s) {', '.join(map(repr, unknown))}; this model's blocks are: {', '.join(mixers)}"
        )
    return {b: mixers[b] for b in dict.fromkeys(blocks)}


class _Recorder:
    """Captures one mixer's input during a forward pass and builds its maps from it afterwards."""

    def __init__(self, name: str, mixer: NMFMixer) -> None:
        self.name, self.mixer = name, mixer
        self.input: Tensor | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.rng: tuple[Tensor, Tensor | None] = (torch.empty(0), None)
        self.calls = 0
        self.result: ComponentMaps | None = None

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        x = (args[0] if args else kwargs["x"]).detach()
        if kwargs.get("channels_last"):  # (the block's call: channels-last in and out)
            x = x.movedim(-1, 1)
        norm = kwargs.get("norm")  # the block lets the mixer normalise its input
        if norm is not None:
            with torch.no_grad():
                x = norm(x.movedim(1, -1)).movedim(-1, 1)
        self.input = x
        self.input_shape = tuple(self.input.shape)
        self.calls += 1
        # The generator states at the block's entry: a random NMF start is drawn again identically.
        cuda = self.input.device.type == "cuda"
        self.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(self.input.device) if cuda else None)

    @torch.no_grad()
    def factorise(self) -> None:
        """Factorise the window matrices of the captured input with the block's own NMF.

        The mixer's sub-block path never forms the window matrices (nor ``V``), so they are built here
        from the same input and weights, with the random generators set back to their state at the
        block's entry (the same random start for ``init="random"``): the factors are the forward
        pass's, up to float rounding.
        """
        if self.input is None:
            raise RuntimeError(f"block {self.name} did not run in the forward pass")
        mats, lay = self.mixer.matrices(self.input)
        cpu_state, cuda_state = self.rng
        devices = [self.input.device] if cuda_state is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, self.input.device)
            u, v = self.mixer.nmf.decompose(mats, nonnegative=True, column_shape=lay.window)
        self.input = None
        self.record(mats, u, v)

    @torch.no_grad()
    def record(self, mats: Tensor, u: Tensor, v: Tensor) -> None:
        if self.input_shape is None:
            raise RuntimeError(f"the NMF of block {self.name} ran outside its mixer's forward pass")
        batch, channels, *spatial = self.input_shape
        layout = self.mixer.matricize.layout(spatial)
        rows, cols, rank = mats.shape[-2], mats.shape[-1], u.shape[-1]
        shape = (batch, len(layout.shifts), channels // rows, layout.num_windows)
        if mats.numel() != math.prod(shape) * rows * cols:
            raise RuntimeError(
                f"block {self.name}: NMF matrices {tuple(mats.shape)} do not match the window layout {layout}"
            )
        x = mats.detach().float().reshape(*shape, rows, cols)
        u = u.detach().float().reshape(*shape, rows, rank)
        v = v.detach().float().reshape(*shape, cols, rank)
        tiny = torch.finfo(torch.float32).tiny
        norms = u.norm(dim=-2, keepdim=True)  # (..., 1, R)
        loadings = u / norms.clamp_min(tiny)
        spatial_factors = v * norms
        residual = (x - u @ v.transpose(-1, -2)).flatten(-2).norm(dim=-1)
        window_error = residual / x.flatten(-2).norm(dim=-1).clamp_min(tiny)
        # Reassemble V^T (R x N) where X (head_dim x N) was: the forward pass's inverse with head_dim = R.
        placer = WindowMatricize(len(spatial), rank, layout.window, layout.shifts)
        maps = placer.inverse(spatial_factors.transpose(-1, -2), layout)
        meta = {
            "block": self.name,
            "spatial": list(spatial),
            "heads": shape[2],
            "head_dim": rows,
            "rank": rank,
            "window": list(layout.window),
            "grid": list(layout.grid),
            "shifts": [list(s) for s in layout.shifts],
            "mean_window_error": float(window_error.mean()),
        }
        self.result = ComponentMaps(
            maps.cpu(), loadings.cpu(), spatial_factors.cpu(), window_error.cpu(), meta
        )


@contextmanager
def _recording(mixers: Mapping[str, NMFMixer]) -> Iterator[list[_Recorder]]:
    """Hook the chosen mixers: a pre-hook keeps each one's input (the forward pass itself is untouched)."""
    recorders = [_Recorder(name, mixer) for name, mixer in mixers.items()]
    with ExitStack() as stack:
        for rec in recorders:
            stack.enter_context(rec.mixer.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
        yield recorders


def _stride(input_spatial: Sequence[int], block_spatial: Sequence[int]) -> list[int | float]:
    out: list[int | float] = []
    for i, b in zip(input_spatial, block_spatial):
        out.append(i // b if i % b == 0 else i / b)
    return out


def explain(
    model: nn.Module, image: Tensor, blocks: Sequence[str] | None = None
) -> tuple[Any, dict[str, ComponentMaps]]:
    """Run ``model`` on ``image (B, C, *spatial)`` in eval mode and collect the NMF components.

    Returns the model's output (bitwise what ``model.eval()(image)`` under ``no_grad`` gives) and, for each
    chosen block (default: all, see :func:`list_blocks`), its :class:`ComponentMaps`. The model's
    training flag is restored afterwards. Each block must run exactly once per forward pass.
    """
    if not isinstance(image, Tensor) or image.dim() < 3:
        raise InputError(f"explain needs an image tensor shaped (B, C, *spatial), got {getattr(image, 'shape', image)}")
    mixers = _resolve_blocks(model, blocks)
    with eval_mode(model), torch.no_grad(), _recording(mixers) as recorders:
        output = model(image)
    results: dict[str, ComponentMaps] = {}
    for rec in recorders:
        if rec.calls != 1:
            raise RuntimeError(
                f"block {rec.name} ran {rec.calls} times in one forward pass; explain needs exactly one"
            )
        rec.factorise()
        assert rec.result is not None
        rec.result.meta["input_spatial"] = list(image.shape[2:])
        rec.result.meta["stride"] = _stride(image.shape[2:], rec.result.meta["spatial"])
        results[rec.name] = rec.result
    return output, results


def upsample_maps(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Resample ``maps (B, K, *spatial)`` to ``size`` by (bi/tri)linear interpolation.

    With ``align_corners=False`` a block voxel at stride ``s`` covers exactly the ``s`` input voxels it was
    computed from; nonnegative maps stay nonnegative.
    """
    size = tuple(int(s) for s in size)
    if maps.dim() != len(size) + 2:
        raise InputError(f"maps of shape {tuple(maps.shape)} cannot be resampled to size {size}")
    if tuple(maps.shape[2:]) == size:
        return maps
    return F.interpolate(maps.float(), size=size, mode=_INTERP_MODES[len(size)], align_corners=False)
