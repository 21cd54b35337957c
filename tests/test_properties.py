"""Property-based tests (hypothesis): window matricize and NMF on arbitrary shapes and values.

Matricize is pure data movement, so its matrices must equal a plain NumPy reference (pad, cyclic roll,
reshape) bit for bit, and its inverse must give the input back, for any shape, window, shifts and values
(zeros, subnormals, huge magnitudes, negatives). NMF must stay finite and nonnegative on any nonnegative
input, map zero matrices to zero, and be scale-equivariant (factorising ``c X`` gives ``c`` times the result).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from benchmarks.reference import effective_layout
from factorseg.models.layers.nmf import NMF
from factorseg.models.layers.windows import WindowMatricize

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HUGE = float(np.float32(1e36))
LARGE = float(np.float32(1e12))
# float32 values of every kind except NaN/inf: zeros, tiny and huge magnitudes, both signs (no subnormals:
# a library loaded with torch sets flush-to-zero, so they cannot be represented here).
ANY_FLOAT = st.one_of(
    st.just(0.0),
    st.floats(-HUGE, HUGE, width=32, allow_subnormal=False, allow_nan=False, allow_infinity=False),
)
# Nonnegative values for NMF, from zero and tiny values up to 1e12 (far above normalised features).
NONNEG_FLOAT = st.one_of(
    st.just(0.0), st.floats(0.0, LARGE, width=32, allow_subnormal=False, allow_nan=False, allow_infinity=False)
)


@st.composite
def matricize_cases(draw: st.DrawFn) -> tuple[np.ndarray, int, tuple[int, ...] | None, list[tuple[int, ...]]]:
    dims = draw(st.integers(1, 3))
    spatial = tuple(draw(st.lists(st.integers(1, 7), min_size=dims, max_size=dims)))
    head_dim = draw(st.integers(1, 3))
    channels = head_dim * draw(st.integers(1, 2))
    window = draw(st.none() | st.tuples(*[st.integers(1, 5)] * dims))
    shifts = draw(st.lists(st.tuples(*[st.integers(0, 6)] * dims), min_size=1, max_size=3))
    x = draw(arrays(np.float32, (draw(st.integers(1, 2)), channels, *spatial), elements=ANY_FLOAT))
    return x, head_dim, window, shifts


def _reference_matrices(x: np.ndarray, head_dim: int, win: tuple[int, ...], grid: tuple[int, ...],
                        shifts: list[tuple[int, ...]]) -> np.ndarray:
    """``(B, S, H, W, head_dim, N)``: zero-pad to whole windows, roll by -shift, cut windows row-major."""
    b, c, *spatial = x.shape
    dims = len(spatial)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(0, g * w - s) for s, w, g in zip(spatial, win, grid)])
    out = []
    for shift in shifts:
        rolled = np.roll(padded, [-s for s in shift], axis=tuple(range(2, 2 + dims)))
        # (B, H, hd, g1, w1, g2, w2, ...) -> (B, H, g1, g2, ..., hd, w1, w2, ...)
        split = rolled.reshape(b, c // head_dim, head_dim, *[v for g, w in zip(grid, win) for v in (g, w)])
        order = [0, 1, *[3 + 2 * i for i in range(dims)], 2, *[4 + 2 * i for i in range(dims)]]
        out.append(split.transpose(order).reshape(b, c // head_dim, int(np.prod(grid)), head_dim, -1))
    return np.stack(out, axis=1)


@FAST
@given(matricize_cases())
def test_matricize_matches_reference_and_round_trips(case: tuple) -> None:
    x, head_dim, window, shifts = case
    m = WindowMatricize(x.ndim - 2, head_dim, window, shifts)
    mats, lay = m(torch.from_numpy(x))
    win, grid, effective = effective_layout(x.shape[2:], window, shifts)
    assert (lay.window, lay.grid, list(lay.shifts)) == (win, grid, effective)
    np.testing.assert_array_equal(mats.numpy(), _reference_matrices(x, head_dim, win, grid, effective))
    back = m.inverse(mats, lay).numpy()
    assert back.shape == x.shape and np.all(np.isfinite(back))
    if len(effective) in (1, 2, 4):  # averaging n equal copies is exact when n is a power of two
        np.testing.assert_array_equal(back, x)
    else:
        np.testing.assert_allclose(back, x, rtol=1e-6, atol=0)


def test_matricize_round_trip_at_the_float32_limit() -> None:
    m = WindowMatricize(2, 1, 2, shifts=[0, 1])
    x = torch.full((1, 1, 4, 4), 3e38)
    mats, lay = m(x)
    assert torch.equal(m.inverse(mats, lay), x)


@st.composite
def nmf_cases(draw: st.DrawFn, elements: st.SearchStrategy = NONNEG_FLOAT) -> tuple[np.ndarray, dict]:
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    x = draw(arrays(np.float32, (draw(st.integers(1, 3)), rows, cols), elements=elements))
    options = {
        "rank": draw(st.integers(1, 3)),
        "num_iters": draw(st.integers(0, 4)),
        "solver": draw(st.sampled_from(["hals", "mu"])),
        "init": draw(st.sampled_from(["fixed", "random", "nndsvd"])),
    }
    return x, options


@FAST
@given(nmf_cases(), st.booleans())
def test_nmf_is_finite_nonnegative_and_zero_preserving(case: tuple, zero_one: bool) -> None:
    x, options = case
    if zero_one:
        x[0] = 0.0  # an all-zero matrix (an empty window after ReLU)
    torch.manual_seed(0)
    out = NMF(x.shape[1], **options)(torch.from_numpy(x))
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and (out >= 0).all()
    zero = np.flatnonzero(~x.reshape(len(x), -1).any(axis=1))
    assert torch.count_nonzero(out[zero]) == 0


@FAST
@given(nmf_cases(elements=st.floats(0.25, 128.0, width=32)), st.integers(-3, 40))
def test_nmf_is_scale_equivariant(case: tuple, exponent: int) -> None:
    """Multiplicative and HALS updates from the fixed start commute with scaling the input.

    Holds where the denominator guard ``eps`` (1e-8) is negligible against the squared entries, hence entries
    of at least 2**-5 here; NNDSVD can start with zero columns, where ``eps`` decides, so it is left out.
    """
    x, options = case
    options["init"] = "fixed"
    layer = NMF(x.shape[1], **options).double()
    scale = 2.0**exponent
    base = layer(torch.from_numpy(x).double())
    scaled = layer(torch.from_numpy(x).double() * scale)
    torch.testing.assert_close(scaled, base * scale, rtol=1e-4, atol=0)


@pytest.mark.parametrize("magnitude", [1e20, 1e30, 3e38])
def test_nmf_is_finite_at_huge_magnitudes(magnitude: float) -> None:
    x = torch.rand(2, 4, 6, generator=torch.Generator().manual_seed(0)) * magnitude
    for solver in ("hals", "mu"):
        assert torch.isfinite(NMF(4, 1, 3, solver=solver)(x)).all()
