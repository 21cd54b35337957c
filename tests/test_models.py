"""Factorizer models: size-agnostic forward/backward, deep supervision, presets and the registry."""

import pytest
import torch

from factorseg.models.blocks import FactorizerBlock
from factorseg.models import PRESETS, available, count_flops, count_parameters, create
from factorseg.models.layers.nmf import set_nmf_iters

SMALL = dict(widths=(8, 16, 32), head_dim=4, window_size=4, dropout=0.0)


@pytest.mark.parametrize("name", ["swin_factorizer", "local_factorizer", "global_factorizer"])
@pytest.mark.parametrize("preset", ["brats", "isles22"])
def test_presets_run_at_three_sizes_with_same_weights(name: str, preset: str) -> None:
    torch.manual_seed(0)
    model = create(name, preset=preset)
    model.train()
    cin, cout, heads = PRESETS[preset]["in_channels"], PRESETS[preset]["out_channels"], PRESETS[preset]["ds_heads"]
    for size in [(16, 16, 16), (32, 16, 48), (48, 32, 16)]:
        x = torch.randn(1, cin, *size)
        outs = model(x)
        assert isinstance(outs, list) and len(outs) == heads
        for k, out in enumerate(outs):
            assert out.shape == (1, cout, *(s // 2**k for s in size))
        sum(o.float().mean() for o in outs).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
        model.zero_grad()
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, cin, 16, 16, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (1, cout, 16, 16, 16)


def test_2d_model_and_window_larger_than_input() -> None:
    model = create("swin_factorizer", in_channels=1, out_channels=2, spatial_dims=2, **SMALL)
    model.eval()
    for size in [(8, 8), (24, 40), (4, 4)]:
        assert model(torch.randn(2, 1, *size)).shape == (2, 2, *size)


def test_size_not_divisible_by_stride_is_a_clear_error() -> None:
    model = create("swin_factorizer", in_channels=1, out_channels=2, **SMALL)
    with pytest.raises(ValueError, match="total stride 4"):
        model(torch.randn(1, 1, 10, 12, 12))


def test_dropout_is_wired_into_every_block() -> None:
    model = create("swin_factorizer", in_channels=1, out_channels=2, **{**SMALL, "dropout": 0.5})
    x = torch.randn(1, 1, 8, 8, 8)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model(x), model(x))
    from factorseg.models.blocks import FactorizerBlock
    for block in (m for m in model.modules() if isinstance(m, FactorizerBlock)):
        assert block.drop.p == 0.5 and block.mlp.net[2].p == 0.5


def test_positional_embedding_resizes() -> None:
    model = create("swin_factorizer", in_channels=1, out_channels=2, pos_embed=True, crop=16, **SMALL)
    assert model.pos_embed is not None and model.pos_embed.weight.shape[2:] == (4, 4, 4)
    model.eval()
    assert model(torch.randn(1, 1, 32, 16, 24)).shape == (1, 2, 32, 16, 24)


def test_nmf_iters_change_on_trained_model() -> None:
    model = create("swin_factorizer", in_channels=1, out_channels=2, **SMALL).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    before = model(x)
    assert set_nmf_iters(model, 1) == 5
    assert not torch.allclose(before, model(x))


def test_registry_builds_baselines() -> None:
    assert {"swin_factorizer", "segresnet", "swinunetr", "unetr", "dynunet", "basicunet"} <= set(available())
    for name, size, kw in [("segresnet", 32, {}), ("swinunetr", 64, {"feature_size": 12}),
                           ("unetr", 32, {"img_size": 32}), ("dynunet", 32, {"patch_size": 32}),
                           ("basicunet", 32, {"features": (4, 4, 8, 16, 32, 4)})]:
        model = create(name, in_channels=2, out_channels=3, **kw).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 2, size, size, size)).shape == (1, 3, size, size, size), name
    with pytest.raises(ValueError, match="unknown model"):
        create("resnet50")


def test_isles_preset_size_matches_paper() -> None:
    """Published: 7.3 M parameters for the ISLES'22 Swin Factorizer."""
    model = create("swin_factorizer", preset="isles22")
    assert abs(count_parameters(model) / 1e6 - 7.3) < 0.15


def test_flop_counter_counts_convolutions() -> None:
    conv = torch.nn.Conv3d(2, 4, 1, bias=False)
    assert count_flops(conv, (1, 2, 4, 4, 4)) == 2 * 2 * 4 * 64


def test_checkpointed_blocks_give_the_same_values_and_gradients() -> None:
    """checkpoint_blocks recomputes blocks in backward: identical outputs and gradients, dropout included."""
    results, calls = [], []
    for flag in (False, True):
        torch.manual_seed(0)
        model = create("swin_factorizer", in_channels=2, out_channels=3, deep_supervision=True, ds_heads=2,
                       checkpoint_blocks=flag, **{**SMALL, "dropout": 0.2}).train()
        blocks = [m for m in model.modules() if isinstance(m, FactorizerBlock)]
        counter = [0]
        for block in blocks:
            block.register_forward_pre_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
        x = torch.randn(1, 2, 16, 16, 16)
        torch.manual_seed(1)
        outputs = model(x)
        loss = sum((o * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in outputs)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results.append(([o.detach() for o in outputs], grads))
        calls.append((len(blocks), counter[0]))
    # Without the flag every block runs once; with it, once more in the backward pass.
    assert calls[0] == (calls[0][0], calls[0][0]) and calls[1] == (calls[1][0], 2 * calls[1][0])
    (out0, g0), (out1, g1) = results
    for a, b in zip(out0, out1):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_defaults_are_the_papers_and_the_earlier_choices_are_options() -> None:
    """The class defaults build the paper's blocks; each earlier factorseg choice is one named option."""
    from factorseg.models.blocks import ConvBlock, ConvStem
    from factorseg.models.factorizer import LEGACY_ARCHITECTURE

    paper = create("swin_factorizer", in_channels=2, out_channels=3, **SMALL)
    assert isinstance(paper.stem, ConvStem) and paper.stem.conv.bias is None
    assert all(d.conv.bias is None and isinstance(d.norm, torch.nn.Identity) for d in paper.down)
    assert all(f.bias is None for f in paper.fuse) and paper.fuse_drop.p == SMALL["dropout"]
    mixers = [b.mixer for b in paper.modules() if isinstance(b, FactorizerBlock)]
    assert all(m.in_proj.bias is None and m.nmf.init == "fixed_uv" and m.nmf.v0.shape == (64, 1) for m in mixers)
    assert all(m.nmf.eps == 1e-8 for m in mixers)
    legacy = create("swin_factorizer", in_channels=2, out_channels=3, **SMALL, **LEGACY_ARCHITECTURE)
    assert isinstance(legacy.stem, ConvBlock) and legacy.pos_embed is None
    assert all(d.conv.bias is not None for d in legacy.down) and all(f.bias is not None for f in legacy.fuse)
    mixers = [b.mixer for b in legacy.modules() if isinstance(b, FactorizerBlock)]
    assert all(m.in_proj.bias is not None and m.nmf.init == "fixed_u" and not hasattr(m.nmf, "v0") for m in mixers)
    # The global variant has no fixed window for a v0: its default is fixed_u.
    glob = create("global_factorizer", in_channels=2, out_channels=3, **SMALL)
    assert {b.mixer.nmf.init for b in glob.modules() if isinstance(b, FactorizerBlock)} == {"fixed_u"}


def test_presets_are_the_papers_heads_and_embeddings() -> None:
    brats = create("swin_factorizer", preset="brats")
    isles = create("swin_factorizer", preset="isles22")
    assert brats.head.out_channels == 3 and isles.head.out_channels == 1  # ISLES'22: one sigmoid channel
    assert tuple(brats.pos_embed.weight.shape) == (1, 512, 8, 8, 8)  # 128^3 crop / 16
    assert tuple(isles.pos_embed.weight.shape) == (1, 512, 4, 4, 4)  # 64^3 crop / 16
    assert create("swin_factorizer", preset="brats", pos_embed=False).pos_embed is None
    # Built for a 96^3 patch, the embedding is sized for it.
    assert tuple(create("swin_factorizer", preset="brats", crop=96).pos_embed.weight.shape[2:]) == (6, 6, 6)


def test_forward_all_returns_every_head_in_eval_mode() -> None:
    model = create("swin_factorizer", in_channels=1, out_channels=2, deep_supervision=True, ds_heads=2, **SMALL)
    model.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        outs = model.forward_all(x)
        assert [tuple(o.shape) for o in outs] == [(1, 2, 16, 16, 16), (1, 2, 8, 8, 8)]
        torch.testing.assert_close(outs[0], model(x), rtol=0, atol=0)


def test_saved_configs_spell_out_the_architecture_and_old_ones_load_as_they_were(tmp_path) -> None:
    """Bundles record the architectural choices; a config without them (older factorseg) gets the earlier ones."""
    from factorseg.inference.loading import load_model
    from factorseg.bundles.format import bundle_config
    from factorseg.io import save_checkpoint
    from factorseg.models.factorizer import LEGACY_ARCHITECTURE

    base = {"name": "swin_factorizer", "in_channels": 1, "out_channels": 2, **SMALL}
    rest = {"labels": {"mode": "classes", "names": ["background", "fg"], "values": [0, 1]},
            "transforms": {}, "channels": ["t1"], "inference": {}}
    explicit = bundle_config({"model": base, **rest})["model"]
    assert explicit["stem"] == "conv" and explicit["down_norm"] is False and explicit["proj_bias"] is False
    old_model = create("swin_factorizer", **{k: v for k, v in base.items() if k != "name"}, **LEGACY_ARCHITECTURE)
    path = tmp_path / "old.pt"
    save_checkpoint({"config": {"model": base, **rest}, "state_dict": old_model.state_dict()}, path)
    loaded = load_model(path)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), old_model.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("dims,shape", [(3, (2, 6, 3, 4, 5)), (2, (1, 4, 5, 7)), (1, (2, 3, 9))])
@pytest.mark.parametrize("bias", [True, False])
def test_transposed_conv_with_the_adjoint_weight_gradient_is_torchs(dims: int, shape, bias: bool) -> None:
    """Values and every gradient of the fast-weight-gradient transposed convolution are nn.ConvTranspose's."""
    from factorseg.models.layers.conv import conv_transpose, conv_transpose_nd

    torch.manual_seed(dims)
    conv = conv_transpose_nd(dims)(shape[1], 3, 2, stride=2, bias=bias).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = [x, *conv.parameters()]
    out = conv_transpose(conv, x)
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), params)
    ref = conv(x)
    ref_grads = torch.autograd.grad((ref * weight).sum(), params)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: conv_transpose(conv, t[0]), (x,))
    # a frozen input (the first up-sampling of a network whose encoder is frozen) and channels-last float32
    conv32 = conv_transpose_nd(dims)(shape[1], 3, 2, stride=2, bias=bias)
    x32 = torch.randn(shape)
    if dims == 3:
        x32 = x32.contiguous(memory_format=torch.channels_last_3d)
    (dw,) = torch.autograd.grad(conv_transpose(conv32, x32).square().sum(), [conv32.weight])
    (dw_ref,) = torch.autograd.grad(conv32(x32).square().sum(), [conv32.weight])
    torch.testing.assert_close(dw, dw_ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16-mixed training on the CPU: PyTorch's own path
        y = conv_transpose(conv32, x32.requires_grad_())
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and conv32.weight.grad is not None and x32.grad is not None


@pytest.mark.parametrize("channels", [1, 3, 4, 8])
def test_stem_conv_is_the_conv_bit_for_bit(channels: int) -> None:
    """The stem's convolution is ``conv(x)`` exactly (values and gradients) wherever PyTorch itself takes oneDNN,
    its float32 output channels-last.

    At (batch 1, 64^3), where PyTorch's heuristic takes its reference kernel (and zero-padding the input channels
    to 8 was once timed faster and taken), the stem is oneDNN's convolution bit for bit, call after call: a
    kernel that depends on nothing but the shapes gives every run the same bits (one chosen by timing rounded
    differently from run to run, and same-seed training then differed); ``conv(x)`` up to float rounding."""
    from factorseg.models.layers.conv import channels_last, stem_conv

    torch.manual_seed(channels)
    conv = torch.nn.Conv3d(channels, 5, 3, padding=1, bias=False).double()
    x = channels_last(torch.randn(2, channels, 5, 6, 4, dtype=torch.float64)).requires_grad_()
    out, ref = stem_conv(conv, x), conv(x)
    assert torch.equal(out, ref)
    weight = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weight).sum(), [x, conv.weight])
    ref_grads = torch.autograd.grad((ref * weight).sum(), [x, conv.weight])
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)
    conv32 = torch.nn.Conv3d(channels, 16, 3, padding=1, bias=False)
    with torch.no_grad():
        for shape in [(2, 5, 6, 4), (1, 64, 64, 64)]:
            x32 = channels_last(torch.randn(shape[0], channels, *shape[1:]))
            out32 = stem_conv(conv32, x32)
            assert out32.is_contiguous(memory_format=torch.channels_last_3d)  # what the blocks after it run on
            if shape[0] > 1 or channels * 64 * 64 > 20480 or not torch.backends.mkldnn.is_available():
                assert torch.equal(out32, conv32(x32))
            else:
                onednn = torch.mkldnn_convolution(x32, conv32.weight, None, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1)
                assert torch.equal(out32, onednn) and torch.equal(out32, stem_conv(conv32, x32))
                torch.testing.assert_close(out32, conv32(x32), rtol=1e-5, atol=1e-5)


def test_stem_conv_float32_gradients_match_float64() -> None:
    """oneDNN's stem convolution under autograd (batch 1, a shape PyTorch would send to its reference kernel):
    values and both gradients against the float64 convolution."""
    from factorseg.models.layers.conv import channels_last, stem_conv

    torch.manual_seed(5)
    conv = torch.nn.Conv3d(4, 8, 3, padding=1, bias=True)
    x = channels_last(torch.randn(1, 4, 12, 10, 8)).requires_grad_()
    out = stem_conv(conv, x)
    weight = torch.randn(out.shape, dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * weight).sum(), [x, conv.weight, conv.bias])
    conv64 = torch.nn.Conv3d(4, 8, 3, padding=1, bias=True).double()
    conv64.load_state_dict(conv.state_dict())
    x64 = x.detach().double().requires_grad_()
    ref = conv64(x64)
    ref_grads = torch.autograd.grad((ref * weight).sum(), [x64, conv64.weight, conv64.bias])
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4)
