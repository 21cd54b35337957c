"""NMF solvers against their defining properties, scikit-learn and autograd."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import NMF as SkNMF

from builders import AtenOps

from factorseg.models.layers.nmf import NMF, head_grams, nndsvd, set_nmf_iters


def _error(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(x - u @ v.transpose(-1, -2))


SHAPES = [(8, 64, 1), (8, 64, 2), (16, 27, 3), (4, 343, 1), (32, 10, 4)]


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("m,n,rank", SHAPES)
def test_objective_never_increases(solver: str, m: int, n: int, rank: int) -> None:
    gen = torch.Generator().manual_seed(m * n + rank)
    x = torch.rand(5, m, n, generator=gen, dtype=torch.float64)
    previous = None
    for iters in range(0, 30):
        layer = NMF(m, rank, iters, solver, init="fixed", seed=3).double()
        err = _error(x, *layer.decompose(x))
        if previous is not None:
            assert torch.all(err <= previous * (1 + 1e-10)), (iters, (err - previous).max())
        previous = err


@pytest.mark.parametrize("solver,sk_solver", [("mu", "mu"), ("hals", "cd")])
@pytest.mark.parametrize("m,n,rank", [(8, 64, 1), (12, 50, 2), (20, 30, 3)])
def test_matches_sklearn(solver: str, sk_solver: str, m: int, n: int, rank: int) -> None:
    rng = np.random.default_rng(m + n + rank)
    # Planted low-rank structure plus noise, as in real feature windows.
    x = rng.random((m, rank)) @ rng.random((rank, n)) + 0.1 * rng.random((m, n))
    sk = SkNMF(rank, solver=sk_solver, init="nndsvda", max_iter=2000, tol=1e-12, random_state=0)
    w = sk.fit_transform(x)
    sk_rel = np.linalg.norm(x - w @ sk.components_) / np.linalg.norm(x)
    xt = torch.from_numpy(x)
    ours = NMF(m, rank, 2000 if solver == "mu" else 500, solver, init="nndsvd").double()
    u, v = ours.decompose(xt)
    our_rel = (_error(xt, u, v) / torch.linalg.matrix_norm(xt)).item()
    assert our_rel <= sk_rel * 1.02 + 1e-9, (our_rel, sk_rel)


def test_rank_one_hals_is_power_iteration_fixed_point() -> None:
    """Rank 1 on nonnegative data converges to the leading singular pair (Perron-Frobenius)."""
    x = torch.rand(6, 40, dtype=torch.float64) + 0.1
    u, v = NMF(6, 1, 300, "hals").double().decompose(x)
    s = torch.linalg.svdvals(x)[0]
    assert torch.allclose(torch.linalg.matrix_norm(u @ v.T, ord=2), s, rtol=1e-8)


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("rank", [1, 2])
def test_gradcheck_full_unrolling(solver: str, rank: int) -> None:
    layer = NMF(4, rank, 3, solver, init="fixed").double()
    x = (torch.rand(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(rank)) + 0.1)
    assert torch.autograd.gradcheck(layer, (x.requires_grad_(),), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("solver", ["hals", "mu"])
@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("k", [1, 2])
def test_gradcheck_last_k_iterations(solver: str, rank: int, k: int) -> None:
    """Last-k mode is the exact gradient of the last k iterations from the (constant) earlier state."""
    iters = 4
    x = torch.rand(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(k + rank)) + 0.1
    with torch.no_grad():
        state = NMF(4, rank, iters - k, solver).double().decompose(x)
    tail = NMF(4, rank, k, solver).double()
    assert torch.autograd.gradcheck(lambda t: tail(t, warm_start=state), (x.clone().requires_grad_(),), eps=1e-6, atol=1e-5)
    truncated = NMF(4, rank, iters, solver, backprop_iters=k).double()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.rand_like(x)
    (truncated(xa) * w).sum().backward()
    (tail(xb, warm_start=state) * w).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-10, atol=1e-12)


def test_one_step_gradient_only_tracks_last_iteration() -> None:
    x = (torch.rand(3, 8, 30) + 0.1).requires_grad_()
    full = NMF(8, 2, 6, "hals", backprop_iters=None)
    one = NMF(8, 2, 6, "hals", backprop_iters=1)
    assert torch.allclose(full(x), one(x))  # same forward value
    g_full = torch.autograd.grad(full(x).sum(), x)[0]
    g_one = torch.autograd.grad(one(x).sum(), x)[0]
    assert not torch.allclose(g_full, g_one)
    # The one-step graph must be much smaller: count autograd nodes.
    def nodes(t: torch.Tensor) -> int:
        seen, stack = set(), [t.grad_fn]
        while stack:
            f = stack.pop()
            if f is None or f in seen:
                continue
            seen.add(f)
            stack.extend(n for n, _ in f.next_functions)
        return len(seen)
    assert nodes(one(x)) * 3 < nodes(full(x))


@pytest.mark.parametrize("init", ["fixed", "random", "nndsvd"])
@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_zero_window_is_finite(init: str, solver: str) -> None:
    x = torch.zeros(2, 3, 8, 27)
    x[0, 0] = torch.rand(8, 27)
    out = NMF(8, 2, 5, solver, init)(x)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_half_precision_autocast_is_finite(dtype: torch.dtype, solver: str) -> None:
    layer = NMF(8, 1, 5, solver)
    x = torch.rand(4, 8, 512) * 1e3
    x[0] = 0
    x[1] = 1e-6
    with torch.autocast("cpu", dtype=dtype):
        out = layer(x.to(dtype))
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    ref = layer(x)
    assert torch.allclose(out.float(), ref, rtol=2e-2, atol=1e-2)


def test_nndsvd_batched_and_nonnegative() -> None:
    x = torch.rand(2, 3, 5, 10, 12, dtype=torch.float64)
    u, v = nndsvd(x, 3)
    assert u.shape == (2, 3, 5, 10, 3) and v.shape == (2, 3, 5, 12, 3)
    assert (u >= 0).all() and (v >= 0).all()
    # Rank-1 NNDSVD is the leading singular triplet of a positive matrix.
    u1, v1 = nndsvd(x, 1)
    s = torch.linalg.svdvals(x)[..., 0]
    assert torch.allclose(torch.linalg.matrix_norm(u1 @ v1.transpose(-1, -2), ord=2), s)


def test_fixed_init_is_saved_and_reproducible() -> None:
    a, b = NMF(8, 2, seed=7), NMF(8, 2, seed=7)
    assert torch.equal(a.u0, b.u0)
    assert not torch.equal(a.u0, NMF(8, 2, seed=8).u0)
    assert "u0" in a.state_dict()
    x = torch.rand(3, 8, 20)
    assert torch.equal(a(x), b(x))


def test_set_nmf_iters_changes_output_and_counts_layers() -> None:
    model = torch.nn.Sequential(NMF(4, 2, 5), NMF(4, 2, 5))
    assert set_nmf_iters(model, 1) == 2
    assert all(m.num_iters == 1 for m in model)
    x = torch.rand(4, 30)
    fewer = model[0](x)
    set_nmf_iters(model, 50)
    assert not torch.allclose(fewer, model[0](x))
    with pytest.raises(ValueError):
        set_nmf_iters(model, -1)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="solver"):
        NMF(4, solver="als")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rows"):
        NMF(4)(torch.rand(5, 9))


@pytest.mark.parametrize(
    "tracked,untracked,detached", [(1, 0, False), (4, 0, False), (3, 2, False), (2, 0, True), (1, 3, False)]
)
@pytest.mark.parametrize("left_differs", [False, True])
def test_gram_loop_backward_is_autograds(tracked: int, untracked: int, detached: bool, left_differs: bool) -> None:
    """The hand-written backward of the Gram-form loop equals autograd through the loop, for every schedule
    (including a left Gram matrix of its own, whose gradient only the first step of a truncated one gets)."""
    from factorseg.models.layers.nmf import _gram_loop, _GramLoop

    gen = torch.Generator().manual_seed(tracked * 10 + untracked)
    m, b = 5, 7
    x = torch.rand(b, m, 9, dtype=torch.float64, generator=gen)
    g = (x @ x.transpose(1, 2)).permute(1, 2, 0).contiguous()  # (M, M, Bf)
    g_left = g.clone() if left_differs else g
    u0 = torch.rand(m, b, dtype=torch.float64, generator=gen)
    if untracked == 0 and not detached:  # a tracked start; one entry of u0 zero: the ReLU's kink stays put
        u0[0, 0] = 0.0
    du, da = torch.randn(m, b, dtype=torch.float64, generator=gen), torch.randn(b, dtype=torch.float64, generator=gen)
    inputs = [t.detach().clone().requires_grad_() for t in (g, g_left, u0)]
    if not left_differs:
        inputs[1] = inputs[0]
    u, a = _gram_loop(*inputs[:2], inputs[2], tracked, untracked, 1e-12, detached)
    expected = torch.autograd.grad([u, a], [inputs[0], inputs[1], inputs[2]], [du, da], allow_unused=True,
                                   materialize_grads=True)
    mine = [t.detach().clone().requires_grad_() for t in (g, g_left, u0)]
    if not left_differs:
        mine[1] = mine[0]
    u2, a2 = _GramLoop.apply(mine[0], mine[1], mine[2], tracked, untracked, 1e-12, detached)
    torch.testing.assert_close((u2, a2), (u, a), rtol=0, atol=0)
    got = torch.autograd.grad([u2, a2], mine, [du, da], allow_unused=True, materialize_grads=True)
    for e, r in zip(got, expected):
        torch.testing.assert_close(e, r, rtol=1e-10, atol=1e-12)
    if untracked or detached:  # a truncated gradient: not the function's own, which gradcheck measures
        return
    assert torch.autograd.gradcheck(
        lambda *t: _GramLoop.apply(t[0], t[1] if left_differs else t[0], t[2], tracked, untracked, 1e-12, detached),
        tuple(t.detach().clone().requires_grad_() for t in (g, g_left, u0 + 0.05)),
    )


@pytest.mark.parametrize("rows", [12, 64])
@pytest.mark.parametrize("heads", [1, 2, 3, 4, 5, 8, 16])
def test_head_grams_match_float64_products(heads: int, rows: int) -> None:
    """Every form of the heads' Gram matrices (one product of all heads, products of groups of heads over
    strided columns, a ragged last group, head by head) against einsum, with the number of products each takes."""
    torch.manual_seed(0)
    blocks = torch.rand(5, rows, heads * 8)
    expected = torch.einsum("kqhi,kqhj->hkij", *[blocks.double().view(5, rows, heads, 8)] * 2)
    with AtenOps() as products:
        out = head_grams(blocks, 8)
    assert out.shape == (heads, 5, 8, 8)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    one_product = heads <= 2 or (heads <= 4 and rows < 64)
    assert products.counts["bmm"] == (1 if heads > 8 or one_product else -(-heads // 2))


@pytest.mark.parametrize("heads", [2, 4, 8])
def test_head_grams_off_the_cpu_take_the_forms_before_pairs(heads: int) -> None:
    """Pairs of heads were measured on the CPU only: elsewhere (here the meta device, shapes only) one product
    up to 4 heads and one head-by-head product above."""
    with AtenOps() as products:
        out = head_grams(torch.empty(5, 64, heads * 8, device="meta"), 8)
    assert out.shape == (heads, 5, 8, 8) and products.counts["bmm"] == 1


def test_transpose_times_under_autograd_is_the_plain_product() -> None:
    """``X^T u`` of channels-last window matrices under autograd (one product for all heads, ``x``'s gradient a
    tensor of its own): the plain product's values and gradients, in float64, and numerically (gradcheck)."""
    from factorseg.models.layers.nmf import _transpose_times
    from factorseg.models.layers.windows import matrices_view

    gen = torch.Generator().manual_seed(0)
    stacked = torch.rand(2, 2, 3, 5, 12, generator=gen, dtype=torch.float64, requires_grad=True)  # (B, S, W, N, C)
    u = torch.rand(2, 2, 3, 3, 4, 1, generator=gen, dtype=torch.float64, requires_grad=True)  # (B, S, H, W, M, R)
    dv = torch.randn(2, 2, 3, 3, 5, 1, generator=gen, dtype=torch.float64)
    x = matrices_view(stacked, 4)
    got = _transpose_times(x, u)
    want = x.transpose(-1, -2) @ u
    torch.testing.assert_close(got, want)
    grads = torch.autograd.grad(got, (stacked, u), dv)
    torch.testing.assert_close(grads, torch.autograd.grad(want, (stacked, u), dv))
    assert torch.autograd.grad(_transpose_times(x, u), x, dv)[0]._base is None  # a tensor of its own, not a view
    assert torch.autograd.gradcheck(lambda s, w: _transpose_times(matrices_view(s, 4), w), (stacked, u))


def test_window_path_sums_the_matrices_gradients_in_place() -> None:
    """The window matrices' three gradients (Gram matrices, ``X v0``, ``X^T u``) are summed into one tensor in place:
    no out-of-place sum of tensors the size of every shift's windows in a window-path mixer's backward pass."""
    from torch.profiler import ProfilerActivity, profile

    from factorseg.models.layers.mixer import NMFMixer
    from factorseg.models.layers.nmf import NMFConfig

    torch.manual_seed(0)
    mixer = NMFMixer(16, 3, head_dim=4, window_size=4, shifts=((0, 0, 0), (2, 2, 2)), nmf=NMFConfig(num_iters=3),
                     path="windows")
    x = torch.randn(2, 8, 8, 8, 16, requires_grad=True)
    out = mixer(x * 1.0, channels_last=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out.square().sum().backward()
    sums = [e.input_shapes[0] for e in prof.events() if e.name == "aten::add" and e.input_shapes]
    assert not [s for s in sums if len(s) == 6 and s[-1] == 64], sums  # (B, S, H, W, M, N) matrices
