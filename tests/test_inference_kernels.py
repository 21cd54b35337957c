"""Inference kernels that run row block by row block give the whole-map formulation's values."""

from __future__ import annotations

import pytest
import torch

from builders import AtenOps

from factorseg.models.blocks import FactorizerBlock
from factorseg.models.layers import fastpath
from factorseg.models.layers.mixer import NMFMixer
from factorseg.models.layers.mlp import MLP
from factorseg.models.layers.norm import ROW_SUM_MAX_CHANNELS, layer_norm_rows


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Row blocks of a few voxels, so that the maps below are split into many (and a ragged last one)."""
    monkeypatch.setattr(fastpath, "ROW_BLOCK_BYTES", 8 * 16 * 8 * 3)  # 24 rows of 16 float64 channels per thread


def test_row_blocks_cover_every_row_once(small_blocks: None) -> None:
    rows = torch.arange(100 * 16, dtype=torch.float64).view(100, 16)
    blocks = fastpath.row_blocks(rows, 16)
    assert [b.shape[0] for b in blocks] == [24, 24, 24, 24, 4]
    assert all(b.data_ptr() == rows[i * 24].data_ptr() for i, b in enumerate(blocks))  # views, not copies
    assert len(fastpath.row_blocks(rows, 10**9)) == 100  # at least one row per block


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_linear_matches_a_float64_product(bias: bool, layout: str) -> None:
    """``fastpath.linear`` (oneDNN's product for float32 CPU rows) against ``F.linear`` in float64."""
    torch.manual_seed(0)
    x, w = torch.randn(1000, 32), torch.randn(48, 32)
    if layout == "transposed":
        x, w = torch.randn(32, 1000).t(), torch.randn(32, 48).t()
    elif layout == "strided":
        x, w = torch.randn(2000, 64)[::2, ::2], torch.randn(48, 64)[:, 1::2]
    b = torch.randn(48) if bias else None
    # The fast path is taken wherever the build has oneDNN (else the values below would be F.linear's own).
    assert fastpath._ONEDNN_LINEAR == torch.backends.mkldnn.is_available()
    out = fastpath.linear(x, w, b)
    expected = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    assert out.dtype == torch.float32 and out.shape == (1000, 48)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert fastpath.linear(x[:0], w, b).shape == (0, 48)
    empty = fastpath.linear(torch.randn(5, 0), torch.randn(48, 0), b)  # no columns: F.linear's zeros (+ bias)
    torch.testing.assert_close(empty, torch.zeros(5, 48) + (0 if b is None else b))


def test_linear_float64_records_gradients_through_f_linear() -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fastpath.linear(a, b), (x, w))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("wanted", ["all", "input", "weight"])
def test_recorded_linear_matches_float64_values_and_gradients(bias: bool, layout: str, wanted: str) -> None:
    """Under autograd, float32 ``fastpath.linear`` (oneDNN forward and input gradient, MKL weight gradient):
    values and every gradient asked for against ``F.linear`` in float64, nothing computed that was not asked."""
    torch.manual_seed(1)
    x, w = torch.randn(700, 24), torch.randn(40, 24)
    if layout == "transposed":
        x, w = torch.randn(24, 700).t(), torch.randn(24, 40).t()
    elif layout == "strided":
        x, w = torch.randn(1400, 48)[::2, ::2], torch.randn(40, 48)[:, 1::2]  # a weight slice, as in the fuse
    b = torch.randn(40) if bias else None
    leaves = {"x": x.requires_grad_(wanted in ("all", "input")), "w": w.requires_grad_(wanted in ("all", "weight"))}
    if b is not None:
        leaves["b"] = b.requires_grad_(wanted == "all")
    weight = torch.randn(700, 40, dtype=torch.float64)
    ops = AtenOps()
    with ops:
        out = fastpath.linear(x, w, b)
        (out.double() * weight).sum().backward()
    assert "_linear_pointwise" in ops.names and "addmm" not in ops.names  # not F.linear's MKL product
    ref = {k: v.detach().double().requires_grad_(v.requires_grad) for k, v in leaves.items()}
    expected = torch.nn.functional.linear(ref["x"], ref["w"], ref.get("b"))
    (expected * weight).sum().backward()
    assert out.dtype == torch.float32 and out.requires_grad
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    for name, leaf in leaves.items():
        if leaf.requires_grad:
            torch.testing.assert_close(leaf.grad.double(), ref[name].grad, rtol=1e-5, atol=1e-4)
        else:
            assert leaf.grad is None


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_gelu_is_gelu_after_the_product_bit_for_bit(approximate: str, bias: bool) -> None:
    """The GELU as oneDNN's post-op: the values of PyTorch's GELU after ``fastpath.linear``, bit for bit; under
    autograd, and in float64, the product then the GELU (values and gradients against float64)."""
    torch.manual_seed(2)
    x, w = torch.randn(900, 32) * 2, torch.randn(128, 32) * 0.5
    b = torch.randn(128) if bias else None
    with AtenOps() as ops:
        fused = fastpath.linear_gelu(x, w, b, approximate)
    # The exact GELU as the product's post-op, not a second pass; the tanh form after the product.
    assert ("gelu_" not in ops.names) is (fastpath._ONEDNN_LINEAR and approximate == "none")
    assert torch.equal(fused, torch.nn.functional.gelu(fastpath.linear(x, w, b), approximate=approximate))
    expected = torch.nn.functional.gelu(
        torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double()), approximate=approximate
    )
    torch.testing.assert_close(fused.double(), expected, rtol=1e-5, atol=1e-5)
    xr = x.clone().requires_grad_()
    recorded = fastpath.linear_gelu(xr, w, b, approximate)
    recorded.square().sum().backward()
    xd = x.double().requires_grad_()
    torch.nn.functional.gelu(
        torch.nn.functional.linear(xd, w.double(), None if b is None else b.double()), approximate=approximate
    ).square().sum().backward()
    torch.testing.assert_close(recorded.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xr.grad.double(), xd.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fastpath.linear_gelu(x.double(), w.double(), None, approximate),
                               torch.nn.functional.gelu(x.double() @ w.double().t(), approximate=approximate))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("rows", [7, 70_001, 70_002])
def test_add_row_products_matches_float64(threads: int, rows: int) -> None:
    """``out += a^T b`` over rows (weight gradients), in chunks of rows per thread where the work is large
    (a ragged last part, a transposed input), else MKL's ``addmm_``: against float64."""
    torch.manual_seed(3)
    a, b = torch.randn(16, rows).t(), torch.randn(rows, 24)  # (a: a transposed view, as dz.t() may be)
    out = torch.randn(16, 24)
    expected = out.double() + a.double().t() @ b.double()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with AtenOps() as ops:
            got = fastpath.add_row_products_(out, a, b)
    finally:
        torch.set_num_threads(previous)
    assert got is out
    chunked = threads > 1 and rows * 16 * 24 >= fastpath.ROW_PRODUCT_CHUNK_WORK
    assert ("bmm" in ops.names) is chunked and ("addmm_" in ops.names) is (not chunked or rows % threads > 0)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("channels", [1, 16, 32, 64, ROW_SUM_MAX_CHANNELS, ROW_SUM_MAX_CHANNELS + 1])
def test_layer_norm_rows_matches_float64(channels: int) -> None:
    """Row sums (oneDNN's one-column products over few channels, PyTorch's reduction over more), PyTorch's
    kernel above; rows with large means, a constant row (zero variance) and an empty block."""
    torch.manual_seed(0)
    x = torch.randn(300, channels) * torch.rand(300, 1) * 4 + torch.randn(300, 1) * 100
    x[0] = 3.0
    with AtenOps() as ops:
        xhat, mean, rstd = layer_norm_rows(x, 1e-5)
    assert ("native_layer_norm" in ops.names) is (channels > ROW_SUM_MAX_CHANNELS)
    ref = torch.ops.aten.native_layer_norm(x.double(), [channels], None, None, 1e-5)
    pytorch = torch.ops.aten.native_layer_norm(x, [channels], None, None, 1e-5)  # float32, its own rounding
    for got, theirs, want in zip((xhat, mean, rstd), pytorch, ref):
        assert got.shape == want.shape and got.dtype == torch.float32
        # No less accurate than PyTorch's float32 kernel (measured: as accurate for the values, 1-800x more
        # for rstd over rows whose deviation is small against their mean).
        error, their_error = ((t.double() - want).abs().max().item() for t in (got, theirs))
        assert error <= 1.5 * their_error + 1e-6, (error, their_error)
    assert layer_norm_rows(x[:0], 1e-5)[0].shape == (0, channels)


def test_layer_norm_rows_records_gradients_through_pytorchs_kernel() -> None:
    x = torch.randn(20, 16, requires_grad=True)
    with AtenOps() as ops:
        layer_norm_rows(x, 1e-5)[0].square().sum().backward()
    assert "native_layer_norm" in ops.names and x.grad is not None


def test_mlp_add_norm_to_equals_the_whole_map_in_float32(small_blocks: None) -> None:
    """The float32 inference kernel (oneDNN's products where the build has them, the LayerNorm by row sums
    with its affine map folded into the first product) against the whole map."""
    torch.manual_seed(0)
    mlp, norm = MLP(16, 2.0, 0.1, 3).eval(), _random_affine(torch.nn.LayerNorm(16))
    y = torch.randn(2, 5, 4, 3, 16)
    expected = y + mlp.forward_channels_last(norm(y))
    with torch.no_grad():
        out = mlp.add_norm_to_(y.clone(), norm)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_mlp_add_norm_to_equals_the_whole_map(small_blocks: None, bias: bool) -> None:
    torch.manual_seed(0)
    mlp = MLP(16, 2.0, 0.1, 3).double().eval()
    if not bias:
        mlp.net[3].bias = None
    norm = torch.nn.LayerNorm(16).double()
    y = torch.randn(2, 5, 4, 3, 16, dtype=torch.float64)
    expected = y + mlp.forward_channels_last(norm(y))
    with torch.no_grad():
        out = mlp.add_norm_to_(y.clone(), norm)
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)


def test_mlp_add_norm_to_keeps_the_random_stream_while_dropout_draws(small_blocks: None) -> None:
    """In train mode without autograd (dropout drawing) the whole-map formulation runs: the same masks."""
    torch.manual_seed(0)
    mlp = MLP(16, 2.0, 0.5, 3).double().train()
    norm = torch.nn.LayerNorm(16).double()
    y = torch.randn(1, 6, 6, 6, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(3)
        out = mlp.add_norm_to_(y.clone(), norm)
        torch.manual_seed(3)
        expected = y + mlp.forward_channels_last(norm(y))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def _random_affine(norm: torch.nn.LayerNorm) -> torch.nn.LayerNorm:
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    return norm


def test_mixer_projection_equals_the_whole_map_in_float32(small_blocks: None) -> None:
    torch.manual_seed(0)
    mixer = NMFMixer(16, 3, head_dim=8, window_size=4, shifts=[0, 2], in_bias=True)
    norm = _random_affine(torch.nn.LayerNorm(16))
    x = torch.randn(2, 16, 6, 8, 5)
    expected = mixer(norm(x.movedim(1, -1)).movedim(-1, 1))
    with torch.no_grad():
        out = mixer(x, norm=norm)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
def test_mixer_projection_equals_the_whole_map(small_blocks: None, bias: bool) -> None:
    torch.manual_seed(0)
    mixer = NMFMixer(16, 3, head_dim=8, window_size=4, shifts=[0, 2], in_bias=bias).double()
    norm = torch.nn.LayerNorm(16).double()
    x = torch.randn(2, 16, 6, 8, 5, dtype=torch.float64)  # padded to whole windows
    expected = mixer(norm(x.movedim(1, -1)).movedim(-1, 1))
    with torch.no_grad():
        out = mixer(x, norm=norm)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_block_inference_equals_its_training_formulation(small_blocks: None) -> None:
    torch.manual_seed(0)
    block = FactorizerBlock(16, 3, 2.0, 0.1, head_dim=8, window_size=4, shifts=[0, 2]).double().eval()
    x = torch.randn(1, 16, 8, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        fast = block(x)
    recorded = block(x.clone().requires_grad_())  # autograd: the whole-map training formulation
    torch.testing.assert_close(fast, recorded, rtol=1e-12, atol=1e-12)
