"""The optimised NMF mixer and Factorizer block against the plain reference formulation (the oracle).

Values and gradients must agree to 1e-5 in float32 (the issue's tolerance) and to float64 rounding in
float64, for every matricize variant (local, shifted, global, padded, 2D), both solvers, ranks 1 and
2, full and last-k gradients, and the fixed_uv (the paper's), fixed_u and random initialisations.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference import effective_layout, reference_block, reference_mixer, reference_nmf, to_windows
from factorseg.models.blocks import FactorizerBlock
from factorseg.models.layers.mixer import MixerPath, NMFMixer, subblocks_pay
from factorseg.models.layers.nmf import NMF, NMFConfig
from factorseg.models.layers.windows import (
    WindowMatricize,
    matrices_view,
    pad_channels_last,
    subblock_edges,
    window_stack,
    window_unstack,
)

# spatial size, head_dim, window, shifts, rank, solver, backprop_iters, num_iters, init
CASES = [
    ((8, 8, 8), 4, 4, [0, 2], 1, "hals", None, 5, "fixed"),  # Swin, divisible
    ((9, 6, 7), 4, 4, [0, 2], 1, "hals", None, 5, "fixed"),  # Swin, padded
    ((9, 6, 7), 4, 4, [0, 2], 1, "hals", 1, 5, "fixed"),  # one-step gradient
    ((9, 6, 7), 4, 4, [0, (2, 1, 3)], 1, "hals", 2, 4, "random"),  # last two, uneven shift
    ((5, 7, 6), 4, None, [0], 1, "hals", None, 3, "fixed"),  # global
    ((10, 12), 2, (4, 3), [0, (2, 1)], 1, "hals", None, 5, "fixed"),  # 2D, sub-blocks of 2 pixels: windows
    ((10, 12), 2, (4, 4), [0, (2, 2)], 1, "hals", None, 5, "fixed"),  # 2D, sub-blocks of 4 pixels
    ((6, 6, 6), 4, 4, [0], 1, "hals", None, 0, "fixed"),  # no iterations: the initial projection
    ((9, 6, 7), 4, 4, [0, 2], 2, "hals", None, 4, "fixed"),  # rank 2: the plain solver path
    ((9, 6, 7), 4, 4, [0, 2], 1, "mu", 1, 4, "fixed"),  # multiplicative updates
    ((8, 6, 4), 4, 4, [0, 2], 2, "mu", None, 3, "random"),
    # The paper's init: fixed u0 and v0, U updated first from v0 (v0 weights voxels by window position).
    ((8, 8, 8), 4, 4, [0, 2], 1, "hals", None, 5, "fixed_uv"),  # Swin, divisible
    ((9, 6, 7), 4, 4, [0, 2], 1, "hals", None, 5, "fixed_uv"),  # padded
    ((9, 6, 7), 4, 4, [0, 2], 1, "hals", 1, 5, "fixed_uv"),  # one-step gradient
    ((9, 6, 7), 4, 4, [0, (2, 1, 3)], 1, "hals", 4, 5, "fixed_uv"),  # last four: the first step untracked
    ((4, 4, 4), 4, 4, [0, 2], 1, "hals", None, 5, "fixed_uv"),  # one window: the shift rolls inside it
    ((3, 4, 2), 4, 4, [0, 2], 1, "hals", None, 5, "fixed_uv"),  # windows shrunk to the input: v0's corner
    ((10, 12), 2, (4, 3), [0, (2, 1)], 1, "hals", None, 5, "fixed_uv"),  # 2D
    ((6, 6, 6), 4, 4, [0], 1, "hals", None, 1, "fixed_uv"),  # one iteration: only the data step
    ((6, 6, 6), 4, 4, [0], 1, "hals", None, 0, "fixed_uv"),  # no iterations: the constant u0 v0^T
    ((9, 6, 7), 4, 4, [0, 2], 2, "hals", None, 4, "fixed_uv"),  # rank 2: the plain solver path
    ((9, 6, 7), 4, 4, [0, 2], 1, "mu", 1, 4, "fixed_uv"),  # multiplicative updates
]


def _mixer(case: tuple, channels: int, dtype: torch.dtype, path: MixerPath = "subblocks") -> tuple[NMFMixer, torch.Tensor]:
    spatial, head_dim, window, shifts, rank, solver, k, iters, init = case
    torch.manual_seed(len(spatial) + rank)
    nmf = NMFConfig(rank=rank, num_iters=iters, solver=solver, init=init, backprop_iters=k, seed=3)
    mixer = NMFMixer(channels, len(spatial), head_dim=head_dim, window_size=window, shifts=shifts, nmf=nmf,
                     path=path).to(dtype)
    x = torch.randn(2, channels, *spatial, dtype=dtype)
    return mixer, x


def _count_decompose_calls(mixer: NMFMixer) -> list[int]:
    """A list that grows by one per ``mixer.nmf.decompose`` call (the window path); undo with ``del``."""
    calls: list[int] = []
    decompose = mixer.nmf.decompose
    mixer.nmf.decompose = lambda *a, **k: calls.append(1) or decompose(*a, **k)  # type: ignore[method-assign]
    return calls


def _run(fn, x: torch.Tensor, params: list[torch.Tensor], weight: torch.Tensor, seed: int) -> tuple:
    torch.manual_seed(seed)  # the same random initialisation for both formulations
    xi = x.clone().requires_grad_()
    out = fn(xi)
    # Zeros for inputs the output does not depend on (the fixed_uv init's u0 v0^T at zero iterations).
    grads = torch.autograd.grad((out * weight).sum(), [xi, *params], materialize_grads=True)
    return out.detach(), grads


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[5]}-r{c[4]}-k{c[6]}-{c[8]}")
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("subblocks", [True, False], ids=["subblocks", "windows"])
def test_mixer_matches_reference(case: tuple, dtype: torch.dtype, tol: float, subblocks: bool) -> None:
    mixer, x = _mixer(case, 8, dtype, "subblocks" if subblocks else "windows")
    rank, solver = case[4], case[5]
    calls = _count_decompose_calls(mixer)
    params = [p for p in mixer.parameters() if p.requires_grad]
    weight = torch.rand(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    out, grads = _run(mixer, x, params, weight, seed=7)
    # The sub-block path never forms the window matrices; it serves every rank-1 HALS case here whose
    # sub-blocks are large enough for the channels, except the fixed_uv init without iterations (the
    # constant u0 v0^T is not a map of the input).
    edges = subblock_edges(mixer.matricize.layout_of(x))
    sub = (subblocks and rank == 1 and solver == "hals" and not (case[8] == "fixed_uv" and case[7] == 0)
           and subblocks_pay(x.shape[1], edges))
    assert len(calls) == (0 if sub else 1)
    del mixer.nmf.decompose
    ref_out, ref_grads = _run(lambda t: reference_mixer(mixer, t), x, params, weight, seed=7)
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol * max(1.0, float(r.abs().max())))


@pytest.mark.parametrize("case", [CASES[1], CASES[5], CASES[6], CASES[8], CASES[12]],
                         ids=["swin", "2d", "2d-subblocks", "rank2", "fixed_uv"])
def test_block_matches_reference(case: tuple) -> None:
    spatial, head_dim, window, shifts, rank, solver, k, iters, init = case
    torch.manual_seed(0)
    block = FactorizerBlock(8, len(spatial), mlp_ratio=2.0, dropout=0.0, head_dim=head_dim, window_size=window,
                            shifts=shifts, nmf=NMFConfig(rank=rank, num_iters=iters, solver=solver, init=init)).double()
    x = torch.randn(1, 8, *spatial, dtype=torch.float64)
    params = list(block.parameters())
    weight = torch.rand(x.shape, dtype=torch.float64)
    out, grads = _run(block, x, params, weight, seed=2)
    ref_out, ref_grads = _run(lambda t: reference_block(block, t), x, params, weight, seed=2)
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-9)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[4], CASES[6], CASES[11], CASES[16]],
                         ids=["swin", "padded", "global", "2d-subblocks", "fixed_uv", "shrunk"])
@pytest.mark.parametrize("box_bytes", [None, 4 * 8 * 8 * 3], ids=["cache", "small-boxes"])
def test_inference_box_paths_match_reference(case: tuple, box_bytes: int | None, monkeypatch) -> None:
    """In inference the mixer projects into its sub-blocks and adds its output to the residual one box of
    sub-blocks at a time: the values of the reference block, the input untouched, whatever the box size."""
    from factorseg.models.layers import fastpath
    from factorseg.models.layers import mixer as mixer_module

    if box_bytes is not None:
        monkeypatch.setattr(fastpath, "ROW_BLOCK_BYTES", box_bytes)
    spatial, head_dim, window, shifts, rank, solver, k, iters, init = case
    torch.manual_seed(0)
    block = FactorizerBlock(8, len(spatial), mlp_ratio=2.0, dropout=0.1, head_dim=head_dim, window_size=window,
                            shifts=shifts, nmf=NMFConfig(rank=rank, num_iters=iters, solver=solver, init=init)).double()
    block.eval()
    x = torch.randn(2, 8, *spatial, dtype=torch.float64)
    before = x.clone()
    boxwise: list[int] = []
    project = mixer_module.project_subblocks
    monkeypatch.setattr(mixer_module, "project_subblocks", lambda *a: boxwise.append(1) or project(*a))
    with torch.inference_mode():
        out = block(x)
        mixed = block.mixer(x, norm=block.norm1.norm, residual=x.movedim(1, -1))
        ref = reference_block(block, x)
        ref_mixed = x + reference_mixer(block.mixer, block.norm1(x))
    lay = block.mixer.matricize.layout_of(x)
    assert len(boxwise) == (0 if lay.is_padded else 2)
    assert torch.equal(x, before)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mixed, ref_mixed, rtol=1e-9, atol=1e-9)


def test_matrices_are_the_reference_windows() -> None:
    """The API layout of the matrices (B, S, H, W, head_dim, N) is the roll-and-reshape one."""
    mixer, x = _mixer(CASES[3], 8, torch.float64)
    mats, lay = mixer.matrices(x)
    window, grid, shifts = effective_layout(x.shape[2:], mixer.matricize.window_size, mixer.matricize.shifts)
    assert lay.window == window and lay.grid == grid and list(lay.shifts) == shifts
    h = torch.relu(mixer.in_proj(x))
    assert lay.padded == (12, 8, 8)
    hp = torch.nn.functional.pad(h, [0, 1, 0, 2, 0, 3])
    expected = torch.stack([to_windows(hp, 4, window, s) for s in shifts], dim=1)
    torch.testing.assert_close(mats, expected, rtol=0, atol=0)
    # The window-major buffer gives the same matrices as a strided view.
    stacked = window_stack(pad_channels_last(h.movedim(1, -1), lay), lay)
    torch.testing.assert_close(matrices_view(stacked, 4), expected, rtol=0, atol=0)
    back = window_unstack(stacked, lay)[:, :9, :6, :7].movedim(-1, 1)
    torch.testing.assert_close(back, len(shifts) * h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [None, 1, 3])
def test_fused_rank1_nmf_matches_reference_on_channels_last_views(k: int | None) -> None:
    """decompose() on a strided view of a window buffer (one Gram product for all heads) vs plain NMF."""
    torch.manual_seed(k or 0)
    stacked = torch.rand(2, 2, 5, 27, 12, dtype=torch.float64, requires_grad=True)
    stacked.data[0, 0, 1] = 0  # an all-zero window stays finite and zero
    mats = matrices_view(stacked, 4)
    layer = NMF(4, 1, 5, "hals", backprop_iters=k, seed=1).double()
    assert layer.fusable
    u, v = layer.decompose(mats, nonnegative=True)
    ref_u, ref_v = reference_nmf(mats, layer.u0.double().expand(*mats.shape[:-2], 4, 1), 5, "hals", k, 1e-12)
    torch.testing.assert_close(u, ref_u, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v, ref_v, rtol=1e-10, atol=1e-12)
    assert torch.equal(v[0, 0, :, 1], torch.zeros_like(v[0, 0, :, 1]))
    weight = torch.rand(mats.shape, dtype=torch.float64)
    grad = torch.autograd.grad(((u @ v.transpose(-1, -2)) * weight).sum(), stacked)[0]
    ref_grad = torch.autograd.grad(((ref_u @ ref_v.transpose(-1, -2)) * weight).sum(), stacked)[0]
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-11)


def test_negative_input_takes_the_plain_path() -> None:
    """Without the nonnegativity promise, inputs with negative entries use the unfused iterations."""
    x = torch.randn(3, 4, 20, dtype=torch.float64)
    layer = NMF(4, 1, 4, "hals").double()
    fused_off = NMF(4, 1, 4, "hals", fused=False).double()
    torch.testing.assert_close(layer(x), fused_off(x), rtol=0, atol=0)


def test_window_matricize_inverse_averages_shifts_and_has_adjoint_gradient() -> None:
    m = WindowMatricize(3, 2, 4, [0, 2])
    x = torch.randn(1, 4, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    mats, lay = m(x)
    torch.testing.assert_close(m.inverse(mats, lay), x, rtol=0, atol=1e-12)
    # <cut(x), y> == <x, cut^T(y)>, and cut^T = S * inverse.
    y = torch.randn(mats.shape, dtype=torch.float64)
    grad = torch.autograd.grad((mats * y).sum(), x)[0]
    torch.testing.assert_close(grad, len(lay.shifts) * m.inverse(y, lay), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="do not match"):
        m.inverse(mats[:, :1], lay)


def test_huge_values_fall_back_to_the_rescaling_window_path() -> None:
    """Gram entries beyond the safe range send the sub-block path to decompose(), which rescales."""
    mixer, x = _mixer(CASES[0], 8, torch.float32)
    calls = _count_decompose_calls(mixer)
    with torch.no_grad():
        ordinary = mixer(x)
        assert not calls
        huge = mixer(x * 1e9)
    assert len(calls) == 1 and torch.isfinite(huge).all()
    with torch.no_grad():
        expected = reference_mixer(mixer, x * 1e9)
    torch.testing.assert_close(huge, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert ordinary.shape == huge.shape


def test_training_after_inference_mode() -> None:
    """Index tensors cached under inference mode (validation) must not break a later training step."""
    mixer, x = _mixer(CASES[0], 8, torch.float32)
    with torch.inference_mode():
        mixer(x)
    out = mixer(x.requires_grad_())
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bf16_autocast_takes_the_window_path_and_stays_close() -> None:
    """Under bf16 autocast the in-projection is bf16: the window path (float32 NMF) must run."""
    mixer, x = _mixer(CASES[0], 8, torch.float32)
    calls = _count_decompose_calls(mixer)
    with torch.no_grad():
        expected = mixer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = mixer(x)
    assert len(calls) == 1
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05 * float(expected.abs().max()))


@pytest.mark.parametrize("window,channels,sub", [(4, 16, True), (4, 24, False), (4, 32, False), (8, 256, True),
                                                 (8, 264, False)])
def test_path_rule(window: int, channels: int, sub: bool) -> None:
    """Windows of 4^3 shifted by 2 have sub-blocks of 8 voxels: up to 16 channels take them; windows of 8^3
    shifted by 4 have 64-voxel ones: up to 256 channels. Either way the values are the reference's."""
    nmf = NMFConfig(rank=1, num_iters=5, init="fixed_uv")
    mixer = NMFMixer(channels, 3, head_dim=8, window_size=window, shifts=[0, window // 2], nmf=nmf).double()
    x = torch.randn(1, channels, 2 * window, 2 * window, window, dtype=torch.float64)
    assert subblocks_pay(channels, subblock_edges(mixer.matricize.layout_of(x))) is sub
    calls = _count_decompose_calls(mixer)
    out = mixer(x)
    assert len(calls) == (0 if sub else 1)
    del mixer.nmf.decompose
    torch.testing.assert_close(out, reference_mixer(mixer, x), rtol=1e-9, atol=1e-9)
