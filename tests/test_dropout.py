"""The CPU dropout of the Factorizer blocks: the distribution, scaling, gradient and seeding of nn.Dropout."""

from __future__ import annotations

import math

import pytest
import torch
from factorseg.models.layers.dropout import Dropout


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


@pytest.mark.parametrize("block_bytes", [64, 2 * 2**20])
@pytest.mark.parametrize("dtype", [torch.int16, torch.int64, torch.uint8])
def test_at_least_in_pieces_is_the_comparison(block_bytes: int, dtype: torch.dtype, monkeypatch) -> None:
    """Every value near the bound and at the type's ends, over sizes that leave a partial last piece."""
    from factorseg.models.layers import fastpath
    from factorseg.models.layers.dropout import at_least

    monkeypatch.setattr(fastpath, "ROW_BLOCK_BYTES", block_bytes)
    info = torch.iinfo(dtype)
    bound = 0 if dtype == torch.uint8 else -26215
    ends = torch.tensor([info.min, info.max, bound - 1, bound, bound + 1, 200, 0]).clamp(info.min, info.max)
    for n in (1, 7, 1000, 100_003):
        values = torch.randint(info.min, info.max, (n,), dtype=torch.int64).to(dtype)
        values[: min(n, 7)] = ends[: min(n, 7)].to(dtype)
        keep = at_least(values, bound)
        assert keep.dtype == torch.bool and keep.shape == values.shape
        assert torch.equal(keep, values >= bound)


def test_random_words_are_the_same_on_any_thread_count_and_seeded() -> None:
    """Pieces drawn side by side give the words one thread gives; a seed (default or own generator) repeats them."""
    from factorseg.models.layers.dropout import WORDS_PER_PIECE, keep_mask, random_words

    n = 3 * WORDS_PER_PIECE + 123  # a partial last piece
    threads = torch.get_num_threads()
    try:
        draws = []
        for t in (1, 3):
            torch.set_num_threads(t)
            torch.manual_seed(9)
            draws.append(random_words(n))
        masks = []
        for t in (1, 2):
            torch.set_num_threads(t)
            masks.append(keep_mask((n,), 0.2, torch.device("cpu"), torch.Generator().manual_seed(4))[0])
    finally:
        torch.set_num_threads(threads)
    assert draws[0].dtype == torch.int64 and draws[0].shape == (n,)
    assert torch.equal(draws[0], draws[1]) and torch.equal(masks[0], masks[1])
    torch.manual_seed(10)
    assert not torch.equal(random_words(n), draws[0])


def test_random_words_are_uniform_and_pieces_independent() -> None:
    """Every bit is a fair coin, and neighbouring pieces (own generators) are uncorrelated."""
    from factorseg.models.layers.dropout import WORDS_PER_PIECE, random_words

    torch.manual_seed(11)
    words = random_words(2 * WORDS_PER_PIECE)
    bits = torch.stack([(words >> k) & 1 for k in range(64)], dim=1).double()  # (n, 64); >> is arithmetic
    # binomial standard deviation of a bit's mean over 2^19 words is 6.9e-4; allow 5 of them
    assert float((bits.mean(0) - 0.5).abs().max()) < 5 * 0.5 / math.sqrt(words.numel())
    first, second = bits[:WORDS_PER_PIECE], bits[WORDS_PER_PIECE:]
    agree = float((first == second).double().mean())
    assert abs(agree - 0.5) < 5 * 0.5 / math.sqrt(first.numel())
