"""Window matricize: exact round trips and the matrices it builds."""

import pytest
import torch

from factorseg.matricize import WindowMatricize

CASES = [
    # spatial size, head_dim, window, shifts
    ((9, 10, 11), 4, 4, [0]),
    ((9, 10, 11), 4, 4, [0, 2]),
    ((16, 16, 16), 2, 8, [0, 4]),
    ((7, 5, 3), 8, (4, 2, 3), [0, (1, 1, 1), (2, 0, 1)]),
    ((12, 12, 12), 4, None, [0]),
    ((3, 4, 5), 4, 16, [0, 8]),
    ((13, 17), 4, 4, [0, 2]),
    ((32, 30), 2, (8, 5), [0, (4, 2), (2, 1)]),
    ((15, 15), 8, None, [0]),
]


@pytest.mark.parametrize("spatial,head_dim,window,shifts", CASES)
def test_round_trip_is_exact(spatial, head_dim, window, shifts) -> None:
    m = WindowMatricize(len(spatial), head_dim, window, shifts)
    x = torch.randn(2, 3 * head_dim, *spatial, dtype=torch.float64)
    mats, layout = m(x)
    assert mats.shape[:3] == (2, len(layout.shifts), 3)
    assert mats.shape[-2] == head_dim
    back = m.inverse(mats, layout)
    assert back.shape == x.shape
    torch.testing.assert_close(back, x, rtol=0, atol=1e-12)


def test_local_windows_hold_the_right_voxels() -> None:
    """Window (i, j) of a 2D map holds rows i*w..(i+1)*w and columns j*w..(j+1)*w, row-major."""
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)
    mats, lay = WindowMatricize(2, head_dim=2, window_size=4)(x)
    assert mats.shape == (1, 1, 1, 4, 2, 16)
    window_10 = mats[0, 0, 0, 2]  # grid (1, 0): rows 4..7, columns 0..3
    torch.testing.assert_close(window_10, x[0, :, 4:8, 0:4].reshape(2, 16))


def test_shifted_window_is_cyclic() -> None:
    x = torch.arange(8 * 8, dtype=torch.float32).reshape(1, 1, 8, 8)
    mats, lay = WindowMatricize(2, head_dim=1, window_size=4, shifts=[0, 2])(x)
    assert lay.shifts == ((0, 0), (2, 2))
    torch.testing.assert_close(mats[0, 1, 0, 0, 0], torch.roll(x, (-2, -2), (2, 3))[0, 0, 0:4, 0:4].reshape(16))


def test_global_and_degenerate_layouts() -> None:
    m = WindowMatricize(3, head_dim=4, window_size=None, shifts=[0])
    assert m.layout((5, 6, 7)).num_windows == 1
    # A window as large as the input makes shifts meaningless: they are dropped.
    lay = WindowMatricize(3, 4, 8, [0, 4]).layout((4, 4, 4))
    assert lay.window == (4, 4, 4) and lay.shifts == ((0, 0, 0),)
    # Shifts along single-window axes only are dropped per axis.
    lay = WindowMatricize(3, 4, 8, [0, 4]).layout((16, 4, 4))
    assert lay.shifts == ((0, 0, 0), (4, 0, 0))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="divisible"):
        WindowMatricize(3, 4, 4)(torch.zeros(1, 6, 4, 4, 4))
    with pytest.raises(ValueError, match="spatial"):
        WindowMatricize(3, 4, 4)(torch.zeros(1, 4, 4, 4))
