"""The training-memory diet of the Factorizer block's MLP branch: same values and gradients, less saved."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from factorseg.blocks import MLP, FactorizerBlock, _dropout_masks, _MLPResidual, _masked, mlp_residual


def _plain(y: torch.Tensor, norm: torch.nn.LayerNorm, mlp: MLP, keep: list) -> torch.Tensor:
    """The branch written out with autograd, dropout masks given."""
    first, act, _, second, _ = mlp.net
    h = F.linear(norm(y), first.weight.flatten(1), first.bias)
    g = _masked(F.gelu(h, approximate=act.approximate), keep[0])
    return y + _masked(F.linear(g, second.weight.flatten(1), second.bias), keep[1])


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
    # The same seed the diet drew, hence the same masks.
    torch.manual_seed(7)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64)) if p > 0 else None
    keep = _dropout_masks(torch.Size([y.numel() // c, 2 * c]), torch.Size([y.numel() // c, c]), p, seed, y.device)
    ref = _plain(y.reshape(-1, c), norm, mlp, keep).view(y.shape)
    ref_grads = torch.autograd.grad((ref * weight).sum(), params)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    if p > 0:  # dropout really happened, and the masks come from the seed
        assert 0 < int(keep[0][0].sum()) < keep[0][0].numel()


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
    for p, seed in ((0.0, None), (0.3, 123)):
        assert torch.autograd.gradcheck(
            lambda *t: _MLPResidual.apply(*t, 1e-5, "none", p, seed), (rows, ln_w, ln_b, w1, b1, w2, b2)
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
    """What autograd keeps for the MLP branch: the diet saves less than half of the plain formulation."""
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
    assert diet < 0.5 * plain, (diet, plain)
