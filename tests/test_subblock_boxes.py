"""The mixer's box-by-box sub-block path (``factorseg.models.layers.subblock_boxes``) in training.

Against the plain reference block (values and every gradient in float64), against the mixer's own window path
given the same dropout mask, whatever the box size, and by finite differences.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference import reference_block
from factorseg.models.blocks import FactorizerBlock
from factorseg.models.layers import fastpath, subblock_boxes
from factorseg.models.layers import mixer as mixer_module
from factorseg.models.layers.dropout import drop_with, keep_mask
from factorseg.models.layers.mixer import NMFMixer, with_mixer_path
from factorseg.models.layers.nmf import NMFConfig
from factorseg.models.layers.windows import WindowLayout, subblock_edges, subblock_weights

# spatial size, head_dim, window, shifts, init: all unpadded (padded maps take the map-by-map path)
CASES = [
    ((8, 8, 8), 4, 4, [0, 2], "fixed_uv"),  # the paper's init: the v0 sums are taken box by box
    ((8, 8, 8), 4, 4, [0, 2], "fixed"),
    ((8, 4, 12), 4, 4, [0, (2, 2, 0)], "random"),  # an uneven shift, a non-cubic map
    ((8, 12), 2, (4, 4), [0, (2, 2)], "fixed_uv"),  # 2D
    ((5, 7, 6), 4, None, [0], "fixed"),  # global: one sub-block per item
]
IDS = ["swin-fixed_uv", "swin-fixed", "uneven", "2d", "global"]


def _spy(monkeypatch) -> list[int]:
    """A list that grows by one per box-by-box projection (training or inference)."""
    calls: list[int] = []
    project = mixer_module.project_subblocks
    monkeypatch.setattr(mixer_module, "project_subblocks", lambda *a: calls.append(1) or project(*a))
    return calls


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> tuple[torch.Tensor, ...]:
    weight = torch.rand(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((out * weight).sum(), inputs, materialize_grads=True)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("box_bytes", [None, 4 * 8 * 8 * 3], ids=["cache", "small-boxes"])
def test_training_block_matches_reference(case: tuple, box_bytes: int | None, monkeypatch) -> None:
    if box_bytes is not None:
        monkeypatch.setattr(fastpath, "ROW_BLOCK_BYTES", box_bytes)
    spatial, head_dim, window, shifts, init = case
    torch.manual_seed(0)
    block = FactorizerBlock(8, len(spatial), mlp_ratio=2.0, dropout=0.0, head_dim=head_dim, window_size=window,
                            shifts=shifts, nmf=NMFConfig(num_iters=4, init=init, seed=2)).double().train()
    x = torch.randn(2, 8, *spatial, dtype=torch.float64, requires_grad=True)
    params = list(block.parameters())
    calls = _spy(monkeypatch)
    torch.manual_seed(5)  # the same random init for both
    out = block(x)
    assert calls == [1]
    grads = _grads(out, [x, *params])
    torch.manual_seed(5)
    ref = reference_block(block, x)
    ref_grads = _grads(ref, [x, *params])
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", CASES[:4], ids=IDS[:4])
@pytest.mark.parametrize("bias", [True, False])
def test_dropped_out_residual_output_matches_the_window_path(case: tuple, bias: bool, monkeypatch) -> None:
    """With a dropout mask, box by box (small boxes) = the window path's output, dropped out, plus the residual."""
    monkeypatch.setattr(fastpath, "ROW_BLOCK_BYTES", 4 * 8 * 8 * 5)
    spatial, head_dim, window, shifts, init = case
    torch.manual_seed(1)
    mixer = NMFMixer(8, len(spatial), head_dim=head_dim, window_size=window, shifts=shifts,
                     nmf=NMFConfig(num_iters=3, init=init, seed=4), in_bias=bias).double()
    norm = torch.nn.LayerNorm(8).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 8, *spatial, dtype=torch.float64, requires_grad=True)
    residual = torch.randn(2, *spatial, 8, dtype=torch.float64, requires_grad=True)
    keep = keep_mask(residual.shape, 0.3, residual.device)
    params = [*mixer.parameters(), *norm.parameters()]
    calls = _spy(monkeypatch)
    torch.manual_seed(3)
    out = mixer(x, norm=norm, residual=residual, keep=keep)
    assert calls == [1]
    grads = _grads(out, [x, residual, *params])
    plain = with_mixer_path(mixer, "windows")
    plain_params = [*plain.parameters(), *norm.parameters()]
    torch.manual_seed(3)
    mixed = plain(norm(x.movedim(1, -1)).movedim(-1, 1)).movedim(1, -1)  # channels-last
    expected = (residual + drop_with(mixed, keep)).movedim(-1, 1)
    expected_grads = _grads(expected, [x, residual, *plain_params])
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    for g, r in zip(grads, expected_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


def test_block_dropout_is_the_plain_formulation_with_the_same_masks() -> None:
    """A training block with dropout: the masks Dropout would draw, in the same order (mixer output, MLP)."""
    torch.manual_seed(0)
    block = FactorizerBlock(8, 3, mlp_ratio=2.0, dropout=0.25, head_dim=4, window_size=4, shifts=[0, 2],
                            nmf=NMFConfig(num_iters=3, init="fixed_uv")).double().train()
    x = torch.randn(1, 8, 8, 8, 4, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(7)
    out = block(x)
    grads = _grads(out, [x, *block.parameters()])

    def plain(t: torch.Tensor) -> torch.Tensor:
        tc = t.movedim(1, -1)
        mixed = with_mixer_path(block.mixer, "windows")(block.norm1(t))
        y = tc + block.drop(mixed.movedim(1, -1))
        return (y + block.mlp.forward_channels_last(block.norm2.norm(y))).movedim(-1, 1)

    torch.manual_seed(7)
    expected = plain(x)
    # (the copy's parameters are other tensors: compare the input's gradient, and the values)
    (expected_dx,) = _grads(expected, [x])
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grads[0], expected_dx, rtol=1e-9, atol=1e-9)
    assert (out - x).ne(0).any()


def test_truncated_gradient_and_padded_maps_keep_the_map_by_map_path(monkeypatch) -> None:
    calls = _spy(monkeypatch)
    block = FactorizerBlock(8, 3, mlp_ratio=2.0, dropout=0.0, head_dim=4, window_size=4, shifts=[0, 2],
                            nmf=NMFConfig(num_iters=4, backprop_iters=1)).double().train()
    block(torch.randn(1, 8, 8, 8, 8, dtype=torch.float64, requires_grad=True)).sum().backward()
    assert calls == []
    block.mixer.nmf.backprop_iters = None
    block(torch.randn(1, 8, 6, 8, 8, dtype=torch.float64, requires_grad=True)).sum().backward()  # padded
    assert calls == []
    block(torch.randn(1, 8, 8, 8, 8, dtype=torch.float64, requires_grad=True)).sum().backward()
    assert calls == [1]


def test_gradcheck(monkeypatch) -> None:
    """Finite differences through both autograd functions (several boxes), every differentiable input."""
    monkeypatch.setattr(fastpath, "ROW_BLOCK_BYTES", 4 * 8 * 8 * 2)
    torch.manual_seed(0)
    lay = WindowLayout((4, 4, 4), (4, 4, 4), (1, 1, 1), ((0, 0, 0), (2, 2, 2)))
    edges = subblock_edges(lay)
    v0 = torch.rand(64, dtype=torch.float64)
    weights = subblock_weights(v0, lay, edges)
    x = torch.randn(2, 4, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    ln_w, ln_b = (torch.randn(4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w, b = torch.randn(4, 4, dtype=torch.float64, requires_grad=True), torch.randn(4, dtype=torch.float64, requires_grad=True)
    keep = keep_mask((2, 4, 4, 4, 4), 0.4, x.device)
    k = 8

    def run(x, ln_w, ln_b, w, b, left, right, bias, residual):
        blocks, grams, per_shift = subblock_boxes.project_subblocks(x, (ln_w, ln_b, 1e-5), w, b, lay, edges, 2, weights)
        out = subblock_boxes.add_subblock_output(residual, blocks, left, right, bias, keep, lay, edges)
        return out, grams, per_shift

    left = torch.randn(2 * k, 3, 4, dtype=torch.float64, requires_grad=True)
    right = torch.randn(2 * k, 3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    residual = torch.randn(2, 4, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (x, ln_w, ln_b, w, b, left, right, bias, residual), fast_mode=True)



@pytest.mark.parametrize("shape", [(50, 8, 16), (30, 8, 64), (20, 64, 32)])  # broadcast / mixed / MKL forms
def test_shift_products_match_einsum(shape: tuple[int, int, int]) -> None:
    """The per-shift weighted sums and their adjoint, in whichever form the sub-block size picks, against einsum;
    the adjoint in place only where asked."""
    from factorseg.models.layers.subblock_boxes import _add_shift_products, _shift_sums

    n, q, c = shape
    g = torch.Generator().manual_seed(n)
    f64 = {"generator": g, "dtype": torch.float64}
    weights, blocks = torch.rand(2, n, q, **f64), torch.rand(n, q, c, **f64)
    grads, d = torch.randn(2, n, c, **f64), torch.randn(n, q, c, **f64)
    out = torch.empty(2, n, c, dtype=torch.float64)
    _shift_sums(weights, blocks, out)
    torch.testing.assert_close(out, torch.einsum("snq,nqc->snc", weights, blocks))
    expected = d + torch.einsum("snq,snc->nqc", weights, grads)
    for inplace in (False, True):
        target = d.clone()
        result = _add_shift_products(target, weights, grads, inplace)
        torch.testing.assert_close(result, expected)
        assert (result is target) if inplace else torch.equal(target, d)  # d itself left as it was


@pytest.mark.parametrize("box_bytes", [None, 4 * 8 * 8 * 3], ids=["whole-planes", "parts-of-planes"])
def test_strided_output_gradient_and_mask_in_map_order(box_bytes: int | None, monkeypatch) -> None:
    """Boxes of whole planes are read and written in map order, boxes of parts of planes in sub-block order; an output
    gradient that is not contiguous (its boxes then not runs of the map) takes the latter: every way gives the window
    path's output and gradients, with a dropout mask on the output."""
    if box_bytes is not None:
        monkeypatch.setattr(fastpath, "ROW_BLOCK_BYTES", box_bytes)
    torch.manual_seed(0)
    mixer = NMFMixer(16, 3, head_dim=8, window_size=4, shifts=[0, 2], nmf=NMFConfig(num_iters=3)).double()
    norm = torch.nn.LayerNorm(16).double()
    x0 = torch.rand(2, 8, 12, 8, 16, dtype=torch.float64)
    keep = keep_mask((2, 8, 12, 8, 16), 0.2, x0.device)
    grad = torch.randn(2, 8, 12, 8, 16, dtype=torch.float64)
    strided = grad.transpose(1, 2).contiguous().transpose(1, 2)  # the same values, other strides
    results = []
    for path, g in (("windows", grad), ("subblocks", grad), ("subblocks", strided)):
        net = with_mixer_path(mixer, path)
        x = x0.clone().requires_grad_()
        out = net(x, norm=norm, channels_last=True, add_input=True, keep=keep)
        out.backward(g)
        results.append((out.detach(), x.grad, *(p.grad for p in (*net.parameters(), *norm.parameters()))))
        norm.zero_grad()
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            torch.testing.assert_close(a, b)
