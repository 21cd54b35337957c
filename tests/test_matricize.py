"""Window matricize: exact round trips and the matrices it builds."""

import pytest
import torch

from factorseg.models.layers.windows import WindowMatricize

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


@pytest.mark.parametrize("spatial,head_dim,window,shifts", CASES)
def test_subblocks_round_trip_and_window_sums(spatial, head_dim, window, shifts) -> None:
    """Sub-block layout: exact inverse; per-window sums equal sums over the gathered windows; adjoints."""
    from factorseg.models.layers.windows import (
        WindowLayout,
        from_subblocks,
        pad_channels_last,
        subblock_edges,
        subblock_sums,
        subblock_windows,
        to_subblocks,
        window_stack,
        window_sums,
    )

    m = WindowMatricize(len(spatial), head_dim, window, shifts)
    lay = m.layout(spatial)
    edges = subblock_edges(lay)
    assert all(w % e == 0 and all(s[i] % e == 0 for s in lay.shifts) for i, (w, e) in enumerate(zip(lay.window, edges)))
    x = pad_channels_last(torch.randn(2, *spatial, 3, dtype=torch.float64), lay)
    blocks = to_subblocks(x, lay, edges)
    assert blocks.shape[1:3] == (x[0, ..., 0].numel() // blocks.shape[2], torch.Size(edges).numel())
    assert torch.equal(from_subblocks(blocks, lay, edges), x)
    # Summing each sub-block, then per window, is summing each window of each shift.
    per_window = window_sums(blocks.sum(2), lay, edges)  # (B, S, W, C)
    torch.testing.assert_close(per_window, window_stack(x, lay).sum(3), rtol=1e-12, atol=1e-12)
    # subblock_sums is the adjoint of window_sums, and to_subblocks' gradient is from_subblocks.
    a = torch.randn(2, blocks.shape[1], 5, dtype=torch.float64)
    b = torch.randn(2, len(lay.shifts), lay.num_windows, 5, dtype=torch.float64)
    torch.testing.assert_close((window_sums(a, lay, edges) * b).sum(), (a * subblock_sums(b, lay, edges)).sum())
    # subblock_windows keeps the shifts apart: their sum is subblock_sums, shift s's part the windows of s.
    per_shift = subblock_windows(b, lay, edges)
    torch.testing.assert_close(per_shift.sum(2), subblock_sums(b, lay, edges), rtol=1e-12, atol=1e-12)
    for s, shift in enumerate(lay.shifts):
        one = WindowLayout(lay.spatial, lay.window, lay.grid, (shift,))
        assert torch.equal(per_shift[:, :, s], subblock_sums(b[:, s : s + 1], one, edges))
    xr = x.clone().requires_grad_()
    g = torch.randn_like(blocks)
    (grad,) = torch.autograd.grad((to_subblocks(xr, lay, edges) * g).sum(), xr)
    assert torch.equal(grad, from_subblocks(g, lay, edges))
    # window_sums' gradient (its adjoint, at any dim) is autograd's through the gather and the sums.
    t = torch.randn(2, 3, blocks.shape[1], 4, dtype=torch.float64, requires_grad=True)
    gw = torch.randn(2, 3, len(lay.shifts), lay.num_windows, 4, dtype=torch.float64)
    (grad,) = torch.autograd.grad((window_sums(t, lay, edges, dim=2) * gw).sum(), t)
    with torch.no_grad():
        expected = torch.zeros_like(t)
        for s, shift in enumerate(lay.shifts):  # each sub-block's window of each shift, by brute force
            one = WindowLayout(lay.spatial, lay.window, lay.grid, (shift,))
            ones = torch.eye(blocks.shape[1], dtype=torch.float64)  # (K, K): sub-block k alone
            member = window_sums(ones, one, edges, dim=0)[0]  # (W, K): 1 where window w holds k
            expected += torch.einsum("bcwd,wk->bckd", gw[:, :, s], member)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spatial,head_dim,window,shifts", CASES)
@pytest.mark.parametrize("voxels", [1, 100, 10**9])
def test_subblock_boxes_tile_the_subblock_order(spatial, head_dim, window, shifts, voxels) -> None:
    """The boxes' sub-block views, in turn, are ``to_subblocks`` of the map (contiguous runs of K covering it once), and
    ``map_order`` takes them back."""
    from factorseg.models.layers.windows import (
        map_order, pad_channels_last, subblock_boxes, subblock_edges, subblock_view, to_subblocks,
    )

    lay = WindowMatricize(len(spatial), head_dim, window, shifts).layout(spatial)
    edges = subblock_edges(lay)
    x = pad_channels_last(torch.randn(2, *spatial, 3), lay)
    blocks = to_subblocks(x, lay, edges)
    boxes = subblock_boxes(lay, edges, voxels)
    assert boxes[0].k.start == 0 and boxes[-1].k.stop == blocks.shape[1]
    assert all(a.k.stop == b.k.start for a, b in zip(boxes, boxes[1:]))
    q = blocks.shape[2]
    assert all((b.k.stop - b.k.start) * q <= max(voxels, q) for b in boxes)  # cache-sized, at least one sub-block
    for i in range(2):
        for box in boxes:
            rows = x[i][box.spatial].reshape(-1, 3)  # the box's voxels in map order
            view = subblock_view(rows, box, edges)
            assert view.shape[:-1] == (*box.counts, *edges)
            assert torch.equal(view.reshape(-1, q, 3), blocks[i, box.k])
            assert torch.equal(map_order(blocks[i, box.k], box, edges), rows)
            assert torch.equal(subblock_view(x[i][box.spatial], box, edges), view)  # the box itself, any strides


@pytest.mark.parametrize("dim", [0, 1, 2, 3])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_row_gather_equals_index_select(dim, index_dtype) -> None:
    """The folded dim-0 gather gives ``index_select``'s values exactly: repeated and unsorted rows,
    one leading row, non-contiguous inputs (which take ``index_select`` itself)."""
    from factorseg.models.layers.windows import _select

    gen = torch.Generator().manual_seed(dim)
    for shape in [(3, 5, 4, 6), (1, 5, 4, 6), (2, 1, 7, 1), (2, 5, 4, 0)]:  # the last: empty rows
        t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        for source in (t, t.transpose(0, 3)):
            n = source.shape[dim]
            if n == 0:
                continue
            index = torch.randint(0, n, (2 * n + 1,), generator=gen).to(index_dtype)
            got = _select(source, dim, index)
            assert torch.equal(got, source.index_select(dim, index))


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_row_scatter_add_equals_index_add(dim) -> None:
    """The folded dim-0 ``index_add_`` adds what ``index_add_`` along ``dim`` adds (repeated rows accumulate)."""
    from factorseg.models.layers.windows import _add_rows

    gen = torch.Generator().manual_seed(dim)
    shape = [3, 4, 5]
    source_shape = list(shape)
    source_shape[dim] = 9
    source = torch.randn(*source_shape, generator=gen, dtype=torch.float64)
    index = torch.randint(0, shape[dim], (9,), generator=gen)
    start = torch.randn(*shape, generator=gen, dtype=torch.float64)
    got = _add_rows(start.clone(), dim, index, source)
    torch.testing.assert_close(got, start.clone().index_add_(dim, index, source), rtol=1e-14, atol=1e-14)
