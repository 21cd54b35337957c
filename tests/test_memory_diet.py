"""The training-memory diet of the Factorizer block's MLP branch: same values and gradients, less saved."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from factorseg.models.blocks import FactorizerBlock
from factorseg.models.layers.mlp import MLP, _MLPResidual, mlp_residual


def _plain(y: torch.Tensor, norm: torch.nn.LayerNorm, mlp: MLP) -> torch.Tensor:
    """The branch as the MLP module computes it, with autograd (its Dropout modules draw the masks)."""
    return y + mlp.forward_channels_last(norm(y))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_values_and_gradients_equal_the_plain_formulation(p: float, approximate: str) -> None:
    torch.manual_seed(0)
    c = 8
    mlp = MLP(c, 2.0, p, 3).double().train()
    mlp.net[1].approximate = approximate
    norm = torch.nn.LayerNorm(c).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    y = torch.randn(2, 5, 4, 3, c, dtype=torch.float64, requires_grad=True)
    params = [y, norm.weight, norm.bias, *mlp.parameters()]
    weight = torch.randn(y.shape, dtype=torch.float64)
    torch.manual_seed(7)
    out = mlp_residual(y, norm, mlp)
    grads = torch.autograd.grad((out * weight).sum(), params)
    torch.manual_seed(7)  # the same random stream: the same dropout masks
    ref = _plain(y, norm, mlp)
    ref_grads = torch.autograd.grad((ref * weight).sum(), params)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    if p > 0:  # dropout really happened
        assert (out - y).eq(0).any()


def test_gradcheck() -> None:
    torch.manual_seed(1)
    c = 4
    rows = torch.randn(6, c, dtype=torch.float64, requires_grad=True)
    ln_w = torch.rand(c, dtype=torch.float64, requires_grad=True)
    ln_b = torch.rand(c, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(8, c, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(8, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(c, 8, dtype=torch.float64, requires_grad=True)
    b2 = torch.randn(c, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(3)
    masks = ((torch.rand(6, 8, generator=gen) > 0.3, 1 / 0.7), (torch.rand(6, c, generator=gen) > 0.3, 1 / 0.7))
    for keep in (None, masks):
        assert torch.autograd.gradcheck(
            lambda *t: _MLPResidual.apply(*t, 1e-5, "none", keep), (rows, ln_w, ln_b, w1, b1, w2, b2)
        )


def test_block_uses_the_diet_only_when_training_with_autograd() -> None:
    block = FactorizerBlock(8, 3, 2.0, 0.0, head_dim=4, window_size=4, shifts=[0, 2]).double()
    x = torch.randn(1, 8, 8, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = block(x)  # the in-place inference path
    xr = x.clone().requires_grad_()
    torch.testing.assert_close(block(xr), expected, rtol=1e-12, atol=1e-12)
    assert block._diet(torch.zeros(1, requires_grad=True)) and not block._diet(torch.zeros(1))


def test_saved_activations_shrink() -> None:
    """What autograd keeps for the MLP branch, per voxel: 15 C + 8 bytes instead of 27 C + 8 (0.56x)."""
    c, v = 32, 4096
    mlp = MLP(c, 2.0, 0.1, 3).train()
    norm = torch.nn.LayerNorm(c)

    def saved_bytes(fn) -> int:
        total = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.numel() >= v:  # activations only, not the weights
                total[0] += t.numel() * t.element_size()
            return t

        y = torch.randn(v, c, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(y).sum().backward()
        return total[0]

    diet = saved_bytes(lambda y: mlp_residual(y, norm, mlp))
    plain = saved_bytes(lambda y: y + mlp.forward_channels_last(norm(y)))
    assert diet < 0.6 * plain, (diet, plain)
