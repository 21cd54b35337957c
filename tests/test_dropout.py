"""The CPU dropout of the Factorizer blocks: the distribution, scaling, gradient and seeding of nn.Dropout."""

from __future__ import annotations

import math

import pytest
import torch
from factorseg.models.layers.dropout import Dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_rate_and_scale(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(200_000)
    out = Dropout(p)(x)
    dropped = float((out == 0).float().mean())
    # Binomial standard deviation of the rate at this size is < 1.2e-3; allow 5 of them.
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / x.numel())
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - round(p * 65536) / 65536)))
    assert abs(float(out.mean()) - 1.0) < 0.01  # expectation preserved


def test_masks_are_independent_of_position_and_between_calls() -> None:
    torch.manual_seed(1)
    drop = Dropout(0.5)
    a, b = drop(torch.ones(100_000)) == 0, drop(torch.ones(100_000)) == 0
    # Two independent masks agree on about half the entries; neighbours are uncorrelated.
    assert abs(float((a == b).float().mean()) - 0.5) < 0.01
    assert abs(float((a[1:] == a[:-1]).float().mean()) - 0.5) < 0.01


def test_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(2)
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    out = Dropout(0.3)(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    scale = 1 / (1 - round(0.3 * 65536) / 65536)
    keep = out != 0
    torch.testing.assert_close(grad, keep.float() * scale)
    torch.testing.assert_close(out, x.detach() * keep * scale)


def test_seeded_by_torch_and_identity_in_eval() -> None:
    x = torch.randn(3, 1000)
    torch.manual_seed(5)
    first = Dropout(0.2)(x)
    torch.manual_seed(5)
    assert torch.equal(first, Dropout(0.2)(x))
    drop = Dropout(0.2).eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(Dropout(0.0)(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))


def test_mask_follows_the_memory_layout() -> None:
    """A channels-last map gets the mask the same map in channels-first memory would get, in its layout."""
    x = torch.randn(2, 8, 5, 4, 3)
    last = x.contiguous(memory_format=torch.channels_last_3d)
    torch.manual_seed(6)
    out_last = Dropout(0.3)(last)
    torch.manual_seed(6)
    # the same draw over the same memory order: the channels-last permutation of a contiguous map
    ref = Dropout(0.3)(x.permute(0, 2, 3, 4, 1).contiguous()).permute(0, 4, 1, 2, 3)
    assert torch.equal(out_last, ref)
    assert out_last.is_contiguous(memory_format=torch.channels_last_3d)
    torch.manual_seed(6)
    keep = Dropout(0.3)(torch.ones(2, 8, 5, 4, 3)) != 0  # contiguous: drawn in shape order as before
    torch.manual_seed(6)
    from factorseg.models.layers.dropout import keep_mask

    assert torch.equal(keep, keep_mask((2, 8, 5, 4, 3), 0.3, torch.device("cpu"))[0])


@pytest.mark.parametrize("block_bytes", [None, 4 * 37])  # the second: many ragged pieces of 37 elements
def test_masked_in_pieces_equals_where(block_bytes, monkeypatch) -> None:
    """The piecewise product (dense, same layout) and the ``where`` fallback (other layouts) agree exactly."""
    from factorseg.models.layers import fastpath
    from factorseg.models.layers.dropout import keep_mask_like, masked

    if block_bytes is not None:
        monkeypatch.setattr(fastpath, "ROW_BLOCK_BYTES", block_bytes)
    torch.manual_seed(8)
    x = torch.randn(2, 6, 5, 4, 3).contiguous(memory_format=torch.channels_last_3d)
    keep, scale = keep_mask_like(x, 0.3)
    expected = torch.where(keep, x, 0.0) * scale
    out = masked(x, (keep, scale))
    assert torch.equal(out, expected) and out.is_contiguous(memory_format=torch.channels_last_3d)
    grad = torch.randn(2, 6, 5, 4, 3)  # contiguous: another layout than the mask's
    assert torch.equal(masked(grad, (keep, scale)), torch.where(keep, grad, 0.0) * scale)
    strided = torch.randn(2, 6, 5, 4, 6)[..., ::2]  # not dense
    assert torch.equal(masked(strided, (keep, scale)), torch.where(keep, strided, 0.0) * scale)


def test_masks_are_the_same_on_any_thread_count_and_seeded() -> None:
    """Pieces drawn side by side give the mask one thread gives; a seed (default or own generator) repeats it."""
    from factorseg.models.layers.dropout import HELPED_FROM_PIECES, NUMBERS_PER_PIECE, keep_mask

    shape, cpu = (HELPED_FROM_PIECES, NUMBERS_PER_PIECE + 41), torch.device("cpu")  # helped; a partial last piece
    threads = torch.get_num_threads()
    try:
        masks, own = [], []
        for t in (1, 3):
            torch.set_num_threads(t)
            torch.manual_seed(9)
            masks.append(keep_mask(shape, 0.3, cpu)[0])
            own.append(keep_mask(shape, 0.2, cpu, torch.Generator().manual_seed(4))[0])
    finally:
        torch.set_num_threads(threads)
    assert masks[0].dtype == torch.bool and masks[0].shape == shape
    assert torch.equal(masks[0], masks[1]) and torch.equal(own[0], own[1])
    torch.manual_seed(10)
    assert not torch.equal(keep_mask(shape, 0.3, cpu)[0], masks[0])


def test_random_numbers_are_uniform_and_pieces_independent() -> None:
    """``u >= bound`` holds for the fraction of 16-bit numbers at least ``bound``, at every bound; the pieces
    (own generators) are uncorrelated; the mask is the comparison of uniform numbers at bit level."""
    from factorseg.models.layers.dropout import NUMBERS_PER_PIECE, random_at_least

    n = 2 * NUMBERS_PER_PIECE
    for bound in (-32768, -32767, -26214, -1, 0, 1, 16384, 32767):
        torch.manual_seed(bound)
        flags = random_at_least(torch.empty(n, dtype=torch.bool), bound)
        expected = (32768 - bound) / 65536
        # binomial standard deviation of the rate over 2^21 numbers is < 3.5e-4; allow 5 of them
        assert abs(float(flags.double().mean()) - expected) < 5 * math.sqrt(expected * (1 - expected) / n) + 1e-12
    torch.manual_seed(11)
    flags = random_at_least(torch.empty(n, dtype=torch.bool), 0).double()  # fair coins
    first, second = flags[:NUMBERS_PER_PIECE], flags[NUMBERS_PER_PIECE:]
    assert abs(float((first == second).double().mean()) - 0.5) < 5 * 0.5 / math.sqrt(NUMBERS_PER_PIECE)
    assert abs(float((flags[1:] == flags[:-1]).double().mean()) - 0.5) < 5 * 0.5 / math.sqrt(n)
    for lag in (4, 8):  # the next word's same byte / 16-bit lane
        assert abs(float((flags[lag:] == flags[:-lag]).double().mean()) - 0.5) < 5 * 0.5 / math.sqrt(n)


def test_masks_equal_the_plain_byte_comparison() -> None:
    """The mask is each number's high byte compared with the bound's, the tie (1 in 256) settled by a byte drawn
    after the piece's words, in the order of the ties: bit for bit what a plain search of the ties gives."""
    import numpy as np

    from factorseg.models.layers.dropout import NUMBERS_PER_PIECE, random_at_least

    n = 2 * NUMBERS_PER_PIECE + 13  # a partial last piece, not a whole number of words
    for bound in (-32768, -26214, 0, 32767):
        gen = torch.Generator().manual_seed(bound + 5)
        flags = random_at_least(torch.empty(n, dtype=torch.bool), bound, gen).numpy()
        seeds = torch.empty(3, dtype=torch.int64).random_(generator=torch.Generator().manual_seed(bound + 5)).tolist()
        high, low = divmod(bound + 32768, 256)
        for i, seed in enumerate(seeds):
            a, b = i * NUMBERS_PER_PIECE, min(n, (i + 1) * NUMBERS_PER_PIECE)
            draw = np.random.PCG64DXSM(seed).random_raw
            top = draw(-(-(b - a) // 8)).view(np.uint8)[: b - a]
            expected = top > high
            ties = np.flatnonzero(top == high)
            expected[ties] = draw(-(-ties.size // 8)).view(np.uint8)[: ties.size] >= low
            assert np.array_equal(flags[a:b], expected)


def test_keep_probability_near_one_drops_almost_everything() -> None:
    """A ``p`` within ``2^-17`` of 1 rounds to ``1 - 2^-16`` (it would otherwise keep nothing and scale by 1/0)."""
    keep, scale = keep_mask((4096,), 1 - 1e-7, torch.device("cpu"))
    assert scale == 65536 and int(keep.sum()) <= 3
