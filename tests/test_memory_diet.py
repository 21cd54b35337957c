"""The Factorizer's training-memory diet (MLP branch, mixer input, skip fusion): same values and gradients,
less saved."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from factorseg.models.blocks import FactorizerBlock
from factorseg.models.factorizer import Factorizer
from factorseg.models.layers import fastpath
from factorseg.models.layers.mixer import NMFMixer, _NormProjectSubblocks
from factorseg.models.layers.mlp import MLP, _MLPResidual, mlp_residual
from factorseg.models.layers.windows import subblock_edges


def _plain(y: torch.Tensor, norm: torch.nn.LayerNorm, mlp: MLP) -> torch.Tensor:
    """The branch as the MLP module computes it, with autograd (its Dropout modules draw the masks)."""
    return y + mlp.forward_channels_last(norm(y))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("block_bytes", [None, 7 * 16 * 8])
def test_values_and_gradients_equal_the_plain_formulation(p: float, approximate: str, block_bytes, monkeypatch) -> None:
    """Also over many ragged row blocks (7 rows of the 16-unit hidden layer), the weight gradients summed."""
    if block_bytes is not None:
        monkeypatch.setattr(fastpath, "ROW_BLOCK_BYTES", block_bytes)
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
    # without biases, and over row blocks of 4 rows (ragged: 6 = 4 + 2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastpath, "ROW_BLOCK_BYTES", 4 * 8 * 8)
        assert torch.autograd.gradcheck(
            lambda *t: _MLPResidual.apply(t[0], t[1], t[2], t[3], None, t[4], None, 1e-5, "none", masks),
            (rows, ln_w, ln_b, w1, w2),
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
    """What autograd keeps for the MLP branch, per voxel: 7 C + 8 bytes instead of 27 C + 8 (0.26x)."""
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
    assert diet < 0.3 * plain, (diet, plain)


# --- the mixer's input: LayerNorm -> in-projection -> ReLU -> sub-blocks -------------------------------------


def _mixer_and_norm(c: int = 8, shifts=((0, 0, 0), (2, 2, 2)), bias: bool = True):
    torch.manual_seed(0)
    mixer = NMFMixer(c, 3, head_dim=4, window_size=4, shifts=shifts, in_bias=bias).double()
    norm = torch.nn.LayerNorm(c).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    return mixer, norm


@pytest.mark.parametrize("spatial", [(8, 8, 8), (6, 8, 5)])  # the second is padded to whole windows
@pytest.mark.parametrize("bias", [False, True])
def test_mixer_diet_values_and_gradients_equal_the_plain_formulation(spatial, bias: bool) -> None:
    mixer, norm = _mixer_and_norm(bias=bias)
    x = torch.randn(2, *spatial, 8, dtype=torch.float64, requires_grad=True)  # channels-last, as blocks hold it
    params = [x, norm.weight, norm.bias, *mixer.parameters()]
    weight = torch.randn(2, 8, *spatial, dtype=torch.float64)
    assert mixer._diet(x, subblock_edges(mixer.matricize.layout_of(x.movedim(-1, 1))))
    out = mixer(x.movedim(-1, 1), norm=norm)
    grads = torch.autograd.grad((out * weight).sum(), params)
    ref = mixer(norm(x).movedim(-1, 1))  # the plain path: autograd through every step
    ref_grads = torch.autograd.grad((ref * weight).sum(), params)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_mixer_diet_gradcheck() -> None:
    mixer, norm = _mixer_and_norm(c=4)
    lay = mixer.matricize.layout(((3, 4, 4)))
    edges = subblock_edges(lay)
    x = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    ln_w, ln_b = norm.weight.detach().requires_grad_(), norm.bias.detach().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *t: _NormProjectSubblocks.apply(*t, 1e-5, lay, edges), (x, ln_w, ln_b, w, b)
    )


def test_mixer_diet_falls_back_to_the_window_path_with_the_same_values(monkeypatch) -> None:
    """Huge values make the sub-block path hand over to the window path; the diet's output feeds it."""
    mixer, norm = _mixer_and_norm()
    mixer, norm = mixer.float(), norm.float()
    with torch.no_grad():
        norm.weight.mul_(1e9)
    calls = []
    decompose = mixer.nmf.decompose
    monkeypatch.setattr(mixer.nmf, "decompose", lambda *a, **k: calls.append(1) or decompose(*a, **k))
    x = torch.randn(1, 8, 8, 8, 8, requires_grad=True)
    out = mixer(x.movedim(-1, 1), norm=norm)
    assert calls == [1]
    ref = mixer(norm(x).movedim(-1, 1))
    # The same values up to rounding: the diet's in-projection is oneDNN's product (fastpath.linear), the
    # recorded reference's MKL's; at 1e9 the NMF's few iterations carry a float32 rounding to ~1e-4.
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_mixer_diet_saves_two_maps_less() -> None:
    """Per voxel the LayerNorm output and the ReLU output (2 C values) are no longer kept."""
    c, n = 32, 16
    mixer = NMFMixer(c, 3, head_dim=8, window_size=8, shifts=[0, 4]).train()
    norm = torch.nn.LayerNorm(c)

    def saved_bytes(fn) -> int:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.numel() >= n**3:  # activations only, not the weights
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = torch.randn(1, n, n, n, c, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x).sum().backward()
        return sum(seen.values())

    diet = saved_bytes(lambda x: mixer(x.movedim(-1, 1), norm=norm))
    plain = saved_bytes(lambda x: mixer(norm(x).movedim(-1, 1)))
    map_bytes = n**3 * c * 4
    assert plain - diet >= 2 * map_bytes - 1024, (diet, plain)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("grad", [True, False])
def test_fuse_equals_the_convolution_of_the_up_sampled_map_and_the_skip(bias: bool, grad: bool) -> None:
    """``_fuse`` (the up-sampling composed with the fuse's part over it) is ``fuse(cat([up(low), skip]))``:
    values and every gradient (float64), with and without the fuse's bias, in training and inference;
    ``compose_up_fuse=False`` (the modules in turn) too."""
    torch.manual_seed(0)
    net = Factorizer(in_channels=1, out_channels=2, widths=(8, 16), head_dim=4, window_size=2,
                     proj_bias=bias).double()
    low = torch.randn(2, 16, 2, 3, 1, dtype=torch.float64).contiguous(memory_format=torch.channels_last_3d)
    skip = torch.randn(2, 8, 4, 6, 2, dtype=torch.float64).contiguous(memory_format=torch.channels_last_3d)
    low.requires_grad_(grad)
    skip.requires_grad_(grad)
    params = [low, skip, *net.up[0].parameters(), *net.fuse[0].parameters()]
    weight = torch.randn(2, 8, 4, 6, 2, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        ref = net.fuse[0](torch.cat([net.up[0](low), skip], dim=1))
        for composed in (True, False):
            net.compose_up_fuse = composed
            out = net._fuse(0, low, skip)
            torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
            assert out.is_contiguous(memory_format=torch.channels_last_3d)
            if grad:
                grads = torch.autograd.grad((out * weight).sum(), params)
                for g, r in zip(grads, torch.autograd.grad((ref * weight).sum(), params, retain_graph=True)):
                    torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grad", [True, False])
def test_fuse_float32_kernels_match_float64(grad: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The float32 CPU fuse: oneDNN's skip product per row block added in place (inference, several blocks)
    or through autograd (training), against the float64 modules in turn: values and gradients."""
    monkeypatch.setattr(fastpath, "ROW_BLOCK_BYTES", 8 * 4 * 10)  # 10 rows of 8 float32 channels per thread
    torch.manual_seed(3)
    net = Factorizer(in_channels=1, out_channels=2, widths=(8, 16), head_dim=4, window_size=2, proj_bias=True)
    ref_net = Factorizer(in_channels=1, out_channels=2, widths=(8, 16), head_dim=4, window_size=2,
                         proj_bias=True).double()
    ref_net.load_state_dict(net.state_dict())
    low = torch.randn(2, 16, 2, 3, 2).contiguous(memory_format=torch.channels_last_3d).requires_grad_(grad)
    skip = torch.randn(2, 8, 4, 6, 4).contiguous(memory_format=torch.channels_last_3d).requires_grad_(grad)
    low64, skip64 = (t.detach().double().requires_grad_(grad) for t in (low, skip))
    weight = torch.randn(2, 8, 4, 6, 4, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        out = net._fuse(0, low, skip)
        ref = ref_net.fuse[0](torch.cat([ref_net.up[0](low64), skip64], dim=1))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    if grad:
        assert type(out.grad_fn).__name__ == "_AddPointwiseBackward"  # the product added in place under autograd
        params = [low, skip, *net.up[0].parameters(), *net.fuse[0].parameters()]
        params64 = [low64, skip64, *ref_net.up[0].parameters(), *ref_net.fuse[0].parameters()]
        grads = torch.autograd.grad((out.double() * weight).sum(), params)
        for g, r in zip(grads, torch.autograd.grad((ref * weight).sum(), params64)):
            torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("channels_first", [False, True])
def test_head_to_channels_first_matches_the_convolution(
    bias: bool, grad: bool, channels_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pointwise_to_channels_first`` in float32 (oneDNN per row block, several blocks and batch items, also under
    autograd) against the float64 1x1 convolution: values, and gradients where autograd records, for channels-last
    and channels-first inputs."""
    from factorseg.models.layers.conv import pointwise_to_channels_first

    monkeypatch.setattr(fastpath, "ROW_BLOCK_BYTES", 8 * 4 * 7)
    torch.manual_seed(4)
    head = torch.nn.Conv3d(8, 3, 1, bias=bias)
    head64 = torch.nn.Conv3d(8, 3, 1, bias=bias).double()
    head64.load_state_dict(head.state_dict())
    x = torch.randn(2, 8, 5, 3, 4).contiguous(memory_format=torch.channels_last_3d)
    if channels_first:
        x = x.contiguous()
    x = x.requires_grad_(grad)
    x64 = x.detach().double().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out, ref = pointwise_to_channels_first(head, x), head64(x64)
    assert out.shape == ref.shape and out.is_contiguous()
    if grad and not channels_first:  # (channels-first maps take the plain product)
        assert type(out.grad_fn).__name__ == "_PointwiseToChannelsFirstBackward"
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    if grad:
        weight = torch.randn_like(ref)
        grads = torch.autograd.grad((out.double() * weight).sum(), [x, *head.parameters()])
        for g, r in zip(grads, torch.autograd.grad((ref * weight).sum(), [x64, *head64.parameters()])):
            torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ln_weight", [False, True])
@pytest.mark.parametrize("ln_bias", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_folded_norm_and_its_gradients_from_row_sums_equal_autograd(ln_weight: bool, ln_bias: bool, bias: bool) -> None:
    """``linear(LN(x))`` from the normalised rows and folded weights, and its parameters' gradients from the
    two row sums, against autograd through ``F.layer_norm`` and ``F.linear`` (float64), with and without
    each affine part."""
    from factorseg.models.layers.norm import fold_norm, norm_linear_grads, normalized

    torch.manual_seed(12)
    x = torch.randn(37, 6, dtype=torch.float64) * 3 + 1
    w = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True) if bias else None
    ln_w = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_() if ln_weight else None
    ln_b = torch.randn(6, dtype=torch.float64, requires_grad=True) if ln_bias else None
    dh = torch.randn(37, 5, dtype=torch.float64)
    h = F.linear(F.layer_norm(x, [6], ln_w, ln_b, 1e-5), w, b)
    params = [t for t in (w, ln_w, ln_b) if t is not None]
    ref = dict(zip(map(id, params), torch.autograd.grad(h, params, dh)))
    _, mean, rstd = torch.ops.aten.native_layer_norm(x, [6], None, None, 1e-5)
    xhat = normalized(x, mean, rstd)
    with torch.no_grad():
        wf, bf = fold_norm(w, b, ln_w, ln_b)
        torch.testing.assert_close(F.linear(xhat, wf, bf), h.detach(), rtol=1e-12, atol=1e-12)
        # the sums taken over two ragged row blocks, as the backward passes take them
        a = dh[:20].t() @ xhat[:20] + dh[20:].t() @ xhat[20:]
        dw, dlw, dlb = norm_linear_grads(a, dh[:20].sum(0) + dh[20:].sum(0), w, ln_w, ln_b)
    torch.testing.assert_close(dw, ref[id(w)], rtol=1e-12, atol=1e-12)
    assert (dlw is None) == (ln_w is None) and (dlb is None) == (ln_b is None)
    if ln_w is not None:
        torch.testing.assert_close(dlw, ref[id(ln_w)], rtol=1e-12, atol=1e-12)
    if ln_b is not None:
        torch.testing.assert_close(dlb, ref[id(ln_b)], rtol=1e-12, atol=1e-12)


def test_diets_without_the_norms_affine_parts_gradcheck() -> None:
    """The MLP's and the mixer input's functions with a LayerNorm that has no weight, or no bias."""
    torch.manual_seed(13)
    rows = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    vec = torch.rand(4, dtype=torch.float64, requires_grad=True)
    mixer, _ = _mixer_and_norm(c=4)
    lay = mixer.matricize.layout(((3, 4, 4)))
    edges = subblock_edges(lay)
    x = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    for ln_w, ln_b in ((None, vec), (vec, None), (None, None)):
        assert torch.autograd.gradcheck(
            lambda r, a, c: _MLPResidual.apply(r, ln_w, ln_b, a, None, c, None, 1e-5, "none", None), (rows, w1, w2)
        )
        assert torch.autograd.gradcheck(
            lambda t, v: _NormProjectSubblocks.apply(t, ln_w, ln_b, v, None, 1e-5, lay, edges), (x, w)
        )
    assert torch.autograd.gradcheck(  # the norm's parameters' gradients, without the linear layers' biases
        lambda r, v: _MLPResidual.apply(r, v, v * 0.5, w1, None, w2, None, 1e-5, "none", None), (rows, vec)
    )


def test_full_resolution_gradients_are_summed_in_place() -> None:
    """Where a map has two uses (a block's input is its own residual, a skip connection is also down-sampled, a
    decoder map feeds a deep-supervision head and the next up-sampling), autograd sums its two gradients into the
    first to arrive when that one is a map of its own: the functions that make those gradients return no views,
    so a training step makes no out-of-place sum of full-resolution maps (each a new map-sized allocation)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    net = Factorizer(in_channels=1, out_channels=2, widths=(8, 16, 32), head_dim=4, window_size=4).train()
    x = torch.randn(1, 1, 32, 32, 32).contiguous(memory_format=torch.channels_last_3d)
    loss = sum(o.square().mean() for o in net(x))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        loss.backward()
    sums = [e.input_shapes[0] for e in prof.events() if e.name == "aten::add" and e.input_shapes]
    full = [s for s in sums if len(s) == 5 and 32 in s]
    assert sums and not full, full
